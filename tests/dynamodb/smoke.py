"""Drives Cairn's DynamoDB endpoint with boto3, as an existing client would.

Usage: smoke.py ENDPOINT ACCESS_KEY_ID SECRET_ACCESS_KEY [SPLIT COMMAND...]
SPLIT COMMAND, with a table name appended, splits that table's widest
partition (`cairn table split --router ... --certificate ...`); without it
the scan across a split is not checked.
Exits non-zero (with the failing check) if any expectation does not hold.
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions

endpoint, key_id, secret = sys.argv[1:4]
split_command = sys.argv[4:]


def client(key=key_id, secret_key=secret):
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret_key,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an error")


ddb = client()

# Tables.
created = ddb.create_table(
    TableName="events",
    KeySchema=[{"AttributeName": "user", "KeyType": "HASH"}, {"AttributeName": "ts", "KeyType": "RANGE"}],
    AttributeDefinitions=[{"AttributeName": "user", "AttributeType": "S"}, {"AttributeName": "ts", "AttributeType": "N"}],
    BillingMode="PAY_PER_REQUEST",
)
assert created["TableDescription"]["TableStatus"] == "ACTIVE", created
described = ddb.describe_table(TableName="events")["Table"]
assert described["KeySchema"][1] == {"AttributeName": "ts", "KeyType": "RANGE"}, described
assert "events" in ddb.list_tables()["TableNames"]
assert error_code(lambda: ddb.create_table(
    TableName="events",
    KeySchema=[{"AttributeName": "user", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "user", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)) == "ResourceInUseException"

# Items of every type.
item = {
    "user": {"S": "ann"}, "ts": {"N": "1700000000.5"}, "blob": {"B": b"\x00\x01\xff"},
    "ok": {"BOOL": True}, "none": {"NULL": True}, "list": {"L": [{"N": "1"}, {"S": "two"}]},
    "map": {"M": {"nested": {"SS": ["x", "y"]}}}, "nums": {"NS": ["1", "2.5"]}, "bins": {"BS": [b"a"]},
}
ddb.put_item(TableName="events", Item=item)
got = ddb.get_item(TableName="events", Key={"user": {"S": "ann"}, "ts": {"N": "1700000000.5"}}, ConsistentRead=True)
assert got["Item"]["blob"] == {"B": b"\x00\x01\xff"}, got
assert got["Item"]["map"]["M"]["nested"]["SS"] == ["x", "y"], got
assert sorted(got["Item"]["nums"]["NS"]) == ["1", "2.5"], got
assert "Item" not in ddb.get_item(TableName="events", Key={"user": {"S": "bob"}, "ts": {"N": "1"}})
ddb.delete_item(TableName="events", Key={"user": {"S": "ann"}, "ts": {"N": "1700000000.5"}})
assert "Item" not in ddb.get_item(TableName="events", Key={"user": {"S": "ann"}, "ts": {"N": "1700000000.5"}},
                                  ConsistentRead=True)

# Conditional writes.
ddb.put_item(TableName="events", Item={"user": {"S": "cy"}, "ts": {"N": "1"}, "v": {"N": "1"}},
             ConditionExpression="attribute_not_exists(#u)", ExpressionAttributeNames={"#u": "user"})
assert error_code(lambda: ddb.put_item(
    TableName="events", Item={"user": {"S": "cy"}, "ts": {"N": "1"}},
    ConditionExpression="attribute_not_exists(#u)", ExpressionAttributeNames={"#u": "user"},
)) == "ConditionalCheckFailedException"

# UpdateItem: SET, arithmetic, REMOVE, ADD, a condition, ALL_NEW.
updated = ddb.update_item(
    TableName="events", Key={"user": {"S": "cy"}, "ts": {"N": "1"}},
    UpdateExpression="SET #n = :name, v = v + :one REMOVE gone ADD hits :two, tags :tags",
    ConditionExpression="v = :one",
    ExpressionAttributeNames={"#n": "name"},
    ExpressionAttributeValues={":name": {"S": "Cy"}, ":one": {"N": "1"}, ":two": {"N": "2"}, ":tags": {"SS": ["t"]}},
    ReturnValues="ALL_NEW",
)["Attributes"]
assert updated["v"] == {"N": "2"} and updated["hits"] == {"N": "2"} and updated["name"] == {"S": "Cy"}, updated
assert error_code(lambda: ddb.update_item(
    TableName="events", Key={"user": {"S": "cy"}, "ts": {"N": "1"}},
    UpdateExpression="SET v = :one", ConditionExpression="v = :one",
    ExpressionAttributeValues={":one": {"N": "1"}},
)) == "ConditionalCheckFailedException"
assert error_code(lambda: ddb.update_item(  # a nested path needs its map
    TableName="events", Key={"user": {"S": "cy"}, "ts": {"N": "1"}},
    UpdateExpression="SET a.b = :one", ExpressionAttributeValues={":one": {"N": "1"}},
)) == "ValidationException"
ddb.delete_item(TableName="events", Key={"user": {"S": "cy"}, "ts": {"N": "1"}},
                ConditionExpression="hits = :two", ExpressionAttributeValues={":two": {"N": "2"}})

# ReturnValues: the item before or after a write, or only what it touched.
key_rv = {"user": {"S": "rv"}, "ts": {"N": "1"}}
assert "Attributes" not in ddb.put_item(TableName="events", Item={**key_rv, "a": {"N": "1"}}, ReturnValues="ALL_OLD")
old = ddb.put_item(TableName="events", Item={**key_rv, "a": {"N": "2"}, "b": {"S": "x"}}, ReturnValues="ALL_OLD")
assert old["Attributes"] == {**key_rv, "a": {"N": "1"}}, old
touched = ddb.update_item(TableName="events", Key=key_rv, UpdateExpression="SET a = a + :one REMOVE b",
                          ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="UPDATED_OLD")
assert touched["Attributes"] == {"a": {"N": "2"}, "b": {"S": "x"}}, touched
touched = ddb.update_item(TableName="events", Key=key_rv, UpdateExpression="SET a = a + :one, c = :one REMOVE b",
                          ExpressionAttributeValues={":one": {"N": "1"}}, ReturnValues="UPDATED_NEW")
assert touched["Attributes"] == {"a": {"N": "4"}, "c": {"N": "1"}}, touched
whole = ddb.update_item(TableName="events", Key=key_rv, UpdateExpression="REMOVE c", ReturnValues="ALL_OLD")
assert whole["Attributes"] == {**key_rv, "a": {"N": "4"}, "c": {"N": "1"}}, whole
assert "Attributes" not in ddb.update_item(TableName="events", Key=key_rv, UpdateExpression="REMOVE c")
gone = ddb.delete_item(TableName="events", Key=key_rv, ReturnValues="ALL_OLD")
assert gone["Attributes"] == {**key_rv, "a": {"N": "4"}}, gone
assert "Attributes" not in ddb.delete_item(TableName="events", Key=key_rv, ReturnValues="ALL_OLD")
assert error_code(lambda: ddb.put_item(TableName="events", Item=key_rv, ReturnValues="ALL_NEW")) == "ValidationException"
assert error_code(lambda: ddb.delete_item(TableName="events", Key=key_rv, ReturnValues="UPDATED_OLD")) == "ValidationException"

# Query: a sort-key range, backwards, in pages of 3.
for ts in range(20):
    ddb.put_item(TableName="events", Item={"user": {"S": "dee"}, "ts": {"N": str(ts)}})
    ddb.put_item(TableName="events", Item={"user": {"S": "eve"}, "ts": {"N": str(ts)}})
seen, start = [], None
while True:
    args = dict(TableName="events", ConsistentRead=True, KeyConditionExpression="#u = :u AND ts BETWEEN :lo AND :hi",
                ExpressionAttributeNames={"#u": "user"},
                ExpressionAttributeValues={":u": {"S": "dee"}, ":lo": {"N": "5"}, ":hi": {"N": "14"}},
                ScanIndexForward=False, Limit=3)
    if start:
        args["ExclusiveStartKey"] = start
    page = ddb.query(**args)
    seen += [int(i["ts"]["N"]) for i in page["Items"]]
    start = page.get("LastEvaluatedKey")
    if not start:
        break
assert seen == list(range(14, 4, -1)), seen

# Scan everything in pages of 7.
count, start = 0, None
while True:
    page = ddb.scan(TableName="events", ConsistentRead=True, Limit=7, **({"ExclusiveStartKey": start} if start else {}))
    count += page["Count"]
    start = page.get("LastEvaluatedKey")
    if not start:
        break
assert count == 40, count  # before the batch below

# begins_with on a string sort key, in both styles; not on a number.
ddb.create_table(
    TableName="docs",
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
    BillingMode="PAY_PER_REQUEST",
)
for sk in ["a", "a#1", "a#2", "a#\uffff", "a$", "ab", "b"]:
    ddb.put_item(TableName="docs", Item={"pk": {"S": "p"}, "sk": {"S": sk}})
    ddb.put_item(TableName="docs", Item={"pk": {"S": "q"}, "sk": {"S": sk}})
page = ddb.query(TableName="docs", ConsistentRead=True, KeyConditionExpression="pk = :p AND begins_with(sk, :a)",
                 ExpressionAttributeValues={":p": {"S": "p"}, ":a": {"S": "a#"}})
assert [i["sk"]["S"] for i in page["Items"]] == ["a#1", "a#2", "a#\uffff"], page
page = ddb.query(TableName="docs", ConsistentRead=True, KeyConditions={
    "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "q"}]},
    "sk": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"S": "a"}]}}, ScanIndexForward=False)
assert [i["sk"]["S"] for i in page["Items"]] == ["ab", "a$", "a#\uffff", "a#2", "a#1", "a"], page
assert error_code(lambda: ddb.query(
    TableName="events", KeyConditionExpression="#u = :u AND begins_with(ts, :one)",
    ExpressionAttributeNames={"#u": "user"}, ExpressionAttributeValues={":u": {"S": "dee"}, ":one": {"S": "1"}},
)) == "ValidationException"

# Nested paths: in updates, conditions, projections and ReturnValues.
key_doc = {"pk": {"S": "doc"}, "sk": {"S": "1"}}
ddb.put_item(TableName="docs", Item={**key_doc, "profile": {"M": {
    "name": {"S": "Ada"}, "langs": {"L": [{"S": "en"}, {"S": "fr"}, {"S": "de"}]},
    "stats": {"M": {"visits": {"N": "1"}}}}}})
touched = ddb.update_item(
    TableName="docs", Key=key_doc,
    UpdateExpression="SET profile.stats.visits = profile.stats.visits + :one, profile.#n = :n, "
                     "profile.langs[7] = :it REMOVE profile.langs[0] ADD profile.stats.likes :one",
    ConditionExpression="profile.langs[1] = :fr AND size(profile.langs) = :three AND begins_with(profile.#n, :a)",
    ExpressionAttributeNames={"#n": "name"},
    ExpressionAttributeValues={":one": {"N": "1"}, ":n": {"S": "Ada L."}, ":it": {"S": "it"}, ":fr": {"S": "fr"},
                               ":three": {"N": "3"}, ":a": {"S": "Ad"}},
    ReturnValues="UPDATED_NEW",
)["Attributes"]
assert touched == {"profile": {"M": {"name": {"S": "Ada L."}, "stats": {"M": {"visits": {"N": "2"}, "likes": {"N": "1"}}}}}}, touched
got = ddb.get_item(TableName="docs", Key=key_doc, ConsistentRead=True,
                   ProjectionExpression="profile.langs[2], profile.langs[0], profile.stats.visits")["Item"]
assert got == {"profile": {"M": {"langs": {"L": [{"S": "fr"}, {"S": "it"}]}, "stats": {"M": {"visits": {"N": "2"}}}}}}, got
assert error_code(lambda: ddb.update_item(
    TableName="docs", Key=key_doc, UpdateExpression="SET profile.missing.x = :one",
    ExpressionAttributeValues={":one": {"N": "1"}})) == "ValidationException"
assert error_code(lambda: ddb.update_item(
    TableName="docs", Key=key_doc, UpdateExpression="SET profile = :one, profile.name = :one",
    ExpressionAttributeValues={":one": {"N": "1"}})) == "ValidationException"  # overlapping paths
assert error_code(lambda: ddb.get_item(
    TableName="docs", Key=key_doc, ProjectionExpression="profile, profile.name")) == "ValidationException"
filtered = ddb.query(TableName="docs", ConsistentRead=True, KeyConditionExpression="pk = :p",
                     FilterExpression="attribute_exists(profile.stats.likes)",
                     ExpressionAttributeValues={":p": {"S": "doc"}})
assert filtered["Count"] == 1, filtered
ddb.delete_table(TableName="docs")

# DynamoDB's errors for bad input; the endpoint keeps serving.
assert error_code(lambda: ddb.get_item(TableName="missing", Key={"user": {"S": "a"}})) == "ResourceNotFoundException"
assert error_code(lambda: ddb.put_item(TableName="events", Item={"user": {"N": "1"}, "ts": {"N": "1"}})) == "ValidationException"
assert error_code(lambda: ddb.put_item(TableName="events", Item={"user": {"S": ""}, "ts": {"N": "1"}})) == "ValidationException"
# A large body (verified and parsed off the router's core) works as a small one.
# Reads that must see a write just made are strongly consistent: others may
# be served by a replica that has not applied it yet, as in DynamoDB.
large = {"user": {"S": "big"}, "ts": {"N": "2"}, "blob": {"B": b"y" * (300 * 1024)}}
ddb.put_item(TableName="events", Item=large)
assert ddb.get_item(TableName="events", Key={"user": {"S": "big"}, "ts": {"N": "2"}}, ConsistentRead=True)["Item"] == large
ddb.delete_item(TableName="events", Key={"user": {"S": "big"}, "ts": {"N": "2"}})
big = {"user": {"S": "big"}, "ts": {"N": "1"}, "blob": {"B": b"x" * (401 * 1024)}}
assert error_code(lambda: ddb.put_item(TableName="events", Item=big)) == "ValidationException"
# Batches: 25 puts and a delete, then a batched get.
writes = [{"PutRequest": {"Item": {"user": {"S": "fay"}, "ts": {"N": str(i)}, "v": {"N": str(i * i)}}}} for i in range(24)]
writes.append({"DeleteRequest": {"Key": {"user": {"S": "eve"}, "ts": {"N": "0"}}}})
assert ddb.batch_write_item(RequestItems={"events": writes})["UnprocessedItems"] == {}
got = ddb.batch_get_item(RequestItems={"events": {"ConsistentRead": True, "Keys": [
    {"user": {"S": "fay"}, "ts": {"N": "3"}}, {"user": {"S": "fay"}, "ts": {"N": "23"}}, {"user": {"S": "eve"}, "ts": {"N": "0"}},
]}})
assert sorted(int(i["v"]["N"]) for i in got["Responses"]["events"]) == [9, 529], got
assert got["UnprocessedKeys"] == {}, got
# A filter and a projection: Count after the filter, ScannedCount before.
page = ddb.query(TableName="events", ConsistentRead=True, KeyConditionExpression="#u = :u", FilterExpression="v >= :min",
                 ProjectionExpression="ts, v", ExpressionAttributeNames={"#u": "user"},
                 ExpressionAttributeValues={":u": {"S": "fay"}, ":min": {"N": "100"}})
assert page["Count"] == 14 and page["ScannedCount"] == 24, page
assert all(set(item) == {"ts", "v"} for item in page["Items"]), page["Items"]
projected = ddb.get_item(TableName="events", Key={"user": {"S": "fay"}, "ts": {"N": "3"}}, ProjectionExpression="v",
                         ConsistentRead=True)
assert projected["Item"] == {"v": {"N": "9"}}, projected
# Conditions combined: AND, OR, NOT, BETWEEN, IN, size, contains,
# attribute_type, and comparisons between attributes.
ddb.put_item(TableName="events", Item={
    "user": {"S": "gus"}, "ts": {"N": "1"}, "v": {"N": "5"}, "cap": {"N": "9"},
    "name": {"S": "gustav"}, "tags": {"SS": ["red", "blue"]},
})
key_gus = {"user": {"S": "gus"}, "ts": {"N": "1"}}
values = {":five": {"N": "5"}, ":one": {"N": "1"}, ":seven": {"N": "7"}, ":red": {"S": "red"},
          ":green": {"S": "green"}, ":ss": {"S": "SS"}, ":six": {"N": "6"}}
def conditional_update(expression, update="SET v = v + :one"):
    args = dict(TableName="events", Key=key_gus, UpdateExpression=update,
                ConditionExpression=expression, ExpressionAttributeValues=values, ReturnValues="ALL_NEW")
    if "#n" in expression:
        args["ExpressionAttributeNames"] = {"#n": "name"}
    return ddb.update_item(**args)["Attributes"]["v"]["N"]
assert conditional_update("v BETWEEN :one AND :five AND contains(tags, :red)") == "6"
assert conditional_update("v < cap AND (attribute_type(tags, :ss) OR attribute_not_exists(nope))") == "7"
assert conditional_update("NOT contains(tags, :green) AND size(#n) = :six AND v IN (:one, cap, :seven)") == "8"
for failing in ["v BETWEEN :one AND :five", "contains(tags, :green)", "NOT attribute_exists(v)",
                "v > cap OR size(#n) > :six"]:
    code = error_code(lambda: conditional_update(failing, update="SET v = :one"))
    assert code == "ConditionalCheckFailedException", (failing, code)
# SET with if_not_exists, list_append and arithmetic; the DELETE clause.
key_hal = {"user": {"S": "hal"}, "ts": {"N": "1"}}
exprs = {":zero": {"N": "0"}, ":one": {"N": "1"}, ":empty": {"L": []}, ":x": {"L": [{"S": "x"}]},
         ":red": {"SS": ["red"]}}
def update_hal(expression):
    return ddb.update_item(TableName="events", Key=key_hal, UpdateExpression=expression,
                           ExpressionAttributeValues={k: v for k, v in exprs.items() if k in expression},
                           ReturnValues="ALL_NEW")["Attributes"]
for expected in ["1", "2"]:
    got = update_hal("SET c = if_not_exists(c, :zero) + :one, l = list_append(if_not_exists(l, :empty), :x)")
    assert got["c"] == {"N": expected}, got
assert got["l"] == {"L": [{"S": "x"}, {"S": "x"}]}, got
got = update_hal("SET d = c - :one, tags = :red")
assert got["d"] == {"N": "1"} and got["tags"] == {"SS": ["red"]}, got
got = update_hal("DELETE tags :red")
assert "tags" not in got, got  # an emptied set is removed
assert error_code(lambda: update_hal("SET e = missing + :one")) == "ValidationException"
assert error_code(lambda: update_hal("SET e = list_append(c, :x)")) == "ValidationException"
# A filter with OR and IN over a query.
page = ddb.query(TableName="events", ConsistentRead=True, KeyConditionExpression="#u = :u",
                 FilterExpression="v IN (:a, :b) OR ts = :c", ExpressionAttributeNames={"#u": "user"},
                 ExpressionAttributeValues={":u": {"S": "fay"}, ":a": {"N": "4"}, ":b": {"N": "9"}, ":c": {"N": "23"}})
assert sorted(int(i["ts"]["N"]) for i in page["Items"]) == [2, 3, 23], page["Items"]
assert error_code(lambda: ddb.query(TableName="events", ConsistentRead=True, KeyConditionExpression="#u = :u",
                                    FilterExpression="v = :u AND", ExpressionAttributeNames={"#u": "user"},
                                    ExpressionAttributeValues={":u": {"S": "fay"}})) == "ValidationException"
# Legacy parameters, as older clients still send them.
key_ivy = {"user": {"S": "ivy"}, "ts": {"N": "1"}}
ddb.put_item(TableName="events", Item={**key_ivy, "v": {"N": "3"}}, Expected={"user": {"Exists": False}})
assert error_code(lambda: ddb.put_item(TableName="events", Item=key_ivy,
                                       Expected={"user": {"Exists": False}})) == "ConditionalCheckFailedException"
got = ddb.update_item(
    TableName="events", Key=key_ivy,
    AttributeUpdates={"v": {"Action": "ADD", "Value": {"N": "2"}}, "w": {"Action": "PUT", "Value": {"S": "x"}}},
    Expected={"v": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "3"}]}}, ReturnValues="ALL_NEW",
)["Attributes"]
assert got["v"] == {"N": "5"} and got["w"] == {"S": "x"}, got
page = ddb.query(
    TableName="events", ConsistentRead=True,
    KeyConditions={"user": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "fay"}]},
                   "ts": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "2"}, {"N": "5"}]}},
    QueryFilter={"v": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "4"}]}},
    AttributesToGet=["ts"],
)
assert [i["ts"]["N"] for i in page["Items"]] == ["3", "4", "5"], page
assert all(set(i) == {"ts"} for i in page["Items"]), page
counted = ddb.query(TableName="events", ConsistentRead=True, KeyConditionExpression="#u = :u", ExpressionAttributeNames={"#u": "user"},
                    ExpressionAttributeValues={":u": {"S": "fay"}}, Select="COUNT")
assert counted["Count"] == 24 and "Items" not in counted, counted
assert error_code(lambda: ddb.query(
    TableName="events", ConsistentRead=True, KeyConditionExpression="#u = :u", ExpressionAttributeNames={"#u": "user"},
    ExpressionAttributeValues={":u": {"S": "fay"}},
    QueryFilter={"v": {"ComparisonOperator": "NOT_NULL"}})) == "ValidationException"  # mixed styles
assert error_code(lambda: ddb.scan(TableName="events", ConsistentRead=True, IndexName="by-v")) == "ValidationException"
# A parallel scan: four segments see every item exactly once between them.
def scan_all(**extra):
    keys, start = [], None
    while True:
        page = ddb.scan(TableName="events", ConsistentRead=True, Limit=5, **extra, **({"ExclusiveStartKey": start} if start else {}))
        keys += [(i["user"]["S"], i["ts"]["N"]) for i in page["Items"]]
        start = page.get("LastEvaluatedKey")
        if not start:
            return keys
everything = scan_all()
segments = [scan_all(Segment=s, TotalSegments=4) for s in range(4)]
assert len(set(everything)) == len(everything) > 50, len(everything)
assert sorted(sum(segments, [])) == sorted(everything), (len(everything), [len(s) for s in segments])
assert sum(1 for s in segments if s) >= 2, [len(s) for s in segments]
assert error_code(lambda: ddb.scan(TableName="events", ConsistentRead=True, Segment=4, TotalSegments=4)) == "ValidationException"
assert error_code(lambda: ddb.scan(TableName="events", ConsistentRead=True, Segment=0)) == "ValidationException"
too_many = [{"PutRequest": {"Item": {"user": {"S": "x"}, "ts": {"N": str(i)}}}} for i in range(26)]
assert error_code(lambda: ddb.batch_write_item(RequestItems={"events": too_many})) == "ValidationException"

# Provisioned capacity: DescribeTable reports it, and writes beyond it are
# throttled with DynamoDB's retryable error (this client does not retry).
ddb.create_table(
    TableName="slow",
    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    ProvisionedThroughput={"ReadCapacityUnits": 4, "WriteCapacityUnits": 4},
)
slow = ddb.describe_table(TableName="slow")["Table"]
assert slow["BillingModeSummary"]["BillingMode"] == "PROVISIONED", slow
assert slow["ProvisionedThroughput"]["WriteCapacityUnits"] == 4, slow
codes = []
for i in range(60):
    try:
        ddb.put_item(TableName="slow", Item={"pk": {"S": str(i)}})
        codes.append("ok")
    except botocore.exceptions.ClientError as error:
        codes.append(error.response["Error"]["Code"])
assert set(codes) == {"ok", "ProvisionedThroughputExceededException"}, codes
ddb.delete_table(TableName="slow")
for bad in [dict(BillingMode="PAY_PER_REQUEST", ProvisionedThroughput={"ReadCapacityUnits": 1, "WriteCapacityUnits": 1}),
            dict(BillingMode="PROVISIONED"), {}]:
    assert error_code(lambda: ddb.create_table(
        TableName="never", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], **bad)) == "ValidationException", bad

# Credentials: wrong secret, unknown key, no signature at all.
assert error_code(lambda: client(secret_key="wrong").list_tables()) == "InvalidSignatureException"
assert error_code(lambda: client(key="AKUNKNOWN").list_tables()) == "UnrecognizedClientException"
unsigned = urllib.request.Request(
    endpoint, data=b"{}", method="POST",
    headers={"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0"},
)
try:
    urllib.request.urlopen(unsigned)
    raise AssertionError("an unsigned request was served")
except urllib.error.HTTPError as error:
    assert json.loads(error.read())["__type"].endswith("UnrecognizedClientException")

# A correctly signed request whose body is not JSON.
raw = botocore.awsrequest.AWSRequest(
    method="POST", url=endpoint, data=b"{not json",
    headers={"X-Amz-Target": "DynamoDB_20120810.ListTables", "Content-Type": "application/x-amz-json-1.0"},
)
botocore.auth.SigV4Auth(botocore.credentials.Credentials(key_id, secret), "dynamodb", "us-east-1").add_auth(raw)
prepared = urllib.request.Request(endpoint, data=raw.body, method="POST", headers=dict(raw.headers.items()))
try:
    urllib.request.urlopen(prepared)
    raise AssertionError("malformed JSON was accepted")
except urllib.error.HTTPError as error:
    assert json.loads(error.read())["__type"].endswith("SerializationException")


def retried(call, deadline_s=30):
    """`call`, again while it fails retryably (a partition being split is
    unavailable until its new group has a leader), up to a deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return call()
        except botocore.exceptions.ClientError as error:
            status = error.response["ResponseMetadata"]["HTTPStatusCode"]
            throttled = error.response["Error"]["Code"].endswith("ProvisionedThroughputExceededException")
            if not (status >= 500 or throttled) or time.monotonic() > deadline:
                raise


# A scan across a split: its first page ends inside the first of four equal
# partitions, which then splits (the widest, first among equals); the pages
# after it return every item once. LastEvaluatedKey carries where the scan
# goes on (cairn:scan) besides the key: with the key alone, the scan would
# go on only in the half that holds the key's hash.
if split_command:
    ddb.create_table(
        TableName="straddle",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    written = [f"item-{i}" for i in range(300)]
    for i in range(0, len(written), 25):
        left = {"straddle": [{"PutRequest": {"Item": {"k": {"S": k}}}} for k in written[i:i + 25]]}
        while left:
            left = ddb.batch_write_item(RequestItems=left).get("UnprocessedItems") or {}
    page = ddb.scan(TableName="straddle", ConsistentRead=True, Limit=20)
    seen = [i["k"]["S"] for i in page["Items"]]
    start = page["LastEvaluatedKey"]
    assert "cairn:scan" in start and start["k"] == page["Items"][-1]["k"], start
    split = subprocess.run(split_command + ["straddle"], capture_output=True, text=True)
    assert split.returncode == 0, split.stderr
    while start:
        page = retried(lambda: ddb.scan(TableName="straddle", ConsistentRead=True, Limit=20, ExclusiveStartKey=start))
        seen += [i["k"]["S"] for i in page["Items"]]
        start = page.get("LastEvaluatedKey")
    assert len(seen) == len(set(seen)), "a scan across a split returned items twice"
    assert sorted(seen) == sorted(written), ("a scan across a split missed items", sorted(set(written) - set(seen))[:5])
    # A key alone, as a client may build it, still starts a scan after it.
    after = retried(lambda: ddb.scan(TableName="straddle", ConsistentRead=True, Limit=5,
                                     ExclusiveStartKey={"k": {"S": "item-7"}}))
    assert all(i["k"]["S"] != "item-7" for i in after["Items"]), after
    # ... and read on to the end, it returns each item after it once (the
    # partition holding the key is not read again from its start).
    seen_after, start = [], {"k": {"S": "item-7"}}
    while start:
        page = retried(lambda: ddb.scan(TableName="straddle", ConsistentRead=True, Limit=1000,
                                        ExclusiveStartKey=start))
        seen_after += [i["k"]["S"] for i in page["Items"]]
        start = page.get("LastEvaluatedKey")
    assert len(seen_after) == len(set(seen_after)), "a scan from a key returned items twice"
    assert "item-7" not in seen_after and 0 < len(seen_after) < len(written), len(seen_after)
    assert error_code(lambda: ddb.scan(TableName="straddle", ExclusiveStartKey={"cairn:scan": {"B": b"forged"}})) \
        == "ValidationException"
    ddb.delete_table(TableName="straddle")

assert "events" in ddb.list_tables()["TableNames"]
ddb.delete_table(TableName="events")
assert "events" not in ddb.list_tables()["TableNames"]
print("dynamodb smoke: all checks passed")
