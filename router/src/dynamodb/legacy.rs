//! DynamoDB's legacy parameters, which existing clients still send, mapped
//! onto the same conditions, key conditions, update actions and
//! projections as the expression parameters: `Expected`, `QueryFilter`,
//! `ScanFilter` (joined by `ConditionalOperator`), `KeyConditions`,
//! `AttributeUpdates` and `AttributesToGet`. A request may not mix a
//! legacy parameter with its expression counterpart.

use std::ops::Bound;

use cairn_common::condition::{CompareOp, Condition, IN_OPERANDS_MAX, Operand};
use cairn_common::update::UpdateAction;
use cairn_common::{AttributeValue, Path};
use serde_json::Value as Json;

use super::api::ApiError;
use super::expr::{KeyCondition, SortCondition};
use super::json::value_from_json;

/// Each legacy parameter and the expression parameter it stands for.
const PAIRS: [(&str, &str); 6] = [
    ("Expected", "ConditionExpression"),
    ("QueryFilter", "FilterExpression"),
    ("ScanFilter", "FilterExpression"),
    ("KeyConditions", "KeyConditionExpression"),
    ("AttributeUpdates", "UpdateExpression"),
    ("AttributesToGet", "ProjectionExpression"),
];

/// Refuses a request that mixes the two styles, as DynamoDB does.
pub fn refuse_mixed(body: &Json) -> Result<(), ApiError> {
    let legacy = PAIRS.iter().find(|(l, _)| body.get(l).is_some());
    let expression = PAIRS.iter().find(|(_, e)| body.get(e).is_some());
    if let (Some((l, _)), Some((_, e))) = (legacy, expression) {
        return Err(ApiError::validation(format!(
            "Can not use both expression and non-expression parameters in the same request: \
             Non-expression parameters: {{{l}}} Expression parameters: {{{e}}}"
        )));
    }
    Ok(())
}

fn map<'a>(
    body: &'a Json,
    name: &str,
) -> Result<Option<&'a serde_json::Map<String, Json>>, ApiError> {
    match body.get(name) {
        None => Ok(None),
        Some(Json::Object(map)) => Ok(Some(map)),
        Some(_) => Err(ApiError::validation(format!("{name} must be a map"))),
    }
}

fn values(spec: &Json, name: &str) -> Result<Vec<AttributeValue>, ApiError> {
    match spec.get("AttributeValueList") {
        None => Ok(Vec::new()),
        Some(Json::Array(list)) => list
            .iter()
            .map(|v| {
                value_from_json(v)
                    .map_err(|e| ApiError::validation(format!("{name}: AttributeValueList: {e}")))
            })
            .collect(),
        Some(_) => Err(ApiError::validation(format!(
            "{name}: AttributeValueList must be a list"
        ))),
    }
}

/// A legacy spec's `Value`, if it has one.
fn spec_value(spec: &Json, name: &str) -> Result<Option<AttributeValue>, ApiError> {
    spec.get("Value")
        .map(|v| value_from_json(v).map_err(|e| ApiError::validation(format!("{name}: {e}"))))
        .transpose()
}

/// `name OPERATOR values…` as a condition.
fn comparison(
    name: &str,
    operator: &str,
    mut list: Vec<AttributeValue>,
) -> Result<Condition, ApiError> {
    let arity = |wanted: usize, list: &[AttributeValue]| {
        if list.len() == wanted {
            Ok(())
        } else {
            Err(ApiError::validation(format!(
                "One or more parameter values were invalid: Invalid number of argument(s) for the \
                 {operator} ComparisonOperator (on {name}: {} given, {wanted} wanted)",
                list.len()
            )))
        }
    };
    let one = |list: &mut Vec<AttributeValue>| -> Result<AttributeValue, ApiError> {
        arity(1, list)?;
        Ok(list.remove(0))
    };
    let compare = |op, value| Condition::Compare {
        attribute: Path::top(name),
        op,
        value,
    };
    Ok(match operator {
        "EQ" => compare(CompareOp::Eq, one(&mut list)?),
        "NE" => compare(CompareOp::Ne, one(&mut list)?),
        "LT" => compare(CompareOp::Lt, one(&mut list)?),
        "LE" => compare(CompareOp::Le, one(&mut list)?),
        "GT" => compare(CompareOp::Gt, one(&mut list)?),
        "GE" => compare(CompareOp::Ge, one(&mut list)?),
        "NOT_NULL" => {
            arity(0, &list)?;
            Condition::Exists(Path::top(name))
        }
        "NULL" => {
            arity(0, &list)?;
            Condition::NotExists(Path::top(name))
        }
        "BEGINS_WITH" => Condition::BeginsWith {
            attribute: Path::top(name),
            prefix: Operand::Value(one(&mut list)?),
        },
        "CONTAINS" | "NOT_CONTAINS" => {
            let contains = Condition::Contains {
                attribute: Path::top(name),
                operand: Operand::Value(one(&mut list)?),
            };
            if operator == "CONTAINS" {
                contains
            } else {
                Condition::Not(Box::new(contains))
            }
        }
        "IN" => {
            if list.is_empty() || list.len() > IN_OPERANDS_MAX {
                return Err(ApiError::validation(format!(
                    "IN on {name} takes 1 to {IN_OPERANDS_MAX} values"
                )));
            }
            Condition::In {
                value: Operand::Attribute(Path::top(name)),
                list: list.into_iter().map(Operand::Value).collect(),
            }
        }
        "BETWEEN" => {
            arity(2, &list)?;
            let high = list.pop().expect("two values");
            let low = list.pop().expect("two values");
            Condition::Between {
                value: Operand::Attribute(Path::top(name)),
                low: Operand::Value(low),
                high: Operand::Value(high),
            }
        }
        other => {
            return Err(ApiError::validation(format!(
                "Unknown ComparisonOperator {other:?} on {name}"
            )));
        }
    })
}

fn join(body: &Json, conditions: Vec<Condition>) -> Result<Option<Condition>, ApiError> {
    let or = match body.get("ConditionalOperator").and_then(Json::as_str) {
        None | Some("AND") => false,
        Some("OR") => true,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "ConditionalOperator must be AND or OR, not {other:?}"
            )));
        }
    };
    Ok(conditions.into_iter().reduce(|a, b| {
        if or {
            Condition::Or(Box::new(a), Box::new(b))
        } else {
            Condition::And(Box::new(a), Box::new(b))
        }
    }))
}

/// `Expected`: per attribute, `Exists`, `Value`, or `ComparisonOperator`
/// with `AttributeValueList`.
pub fn expected(body: &Json) -> Result<Option<Condition>, ApiError> {
    let Some(expected) = map(body, "Expected")? else {
        return Ok(None);
    };
    let mut conditions = Vec::new();
    for (name, spec) in expected {
        let value = spec_value(spec, name)?;
        let condition = match (
            spec.get("ComparisonOperator").and_then(Json::as_str),
            spec.get("Exists").and_then(Json::as_bool),
            value,
        ) {
            (Some(operator), _, _) => comparison(name, operator, values(spec, name)?)?,
            (None, Some(false), None) => Condition::NotExists(Path::top(name.clone())),
            (None, Some(false), Some(_)) => {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: Value cannot be used when Exists is false (on {name})"
                )));
            }
            (None, _, Some(value)) => Condition::Compare {
                attribute: Path::top(name.clone()),
                op: CompareOp::Eq,
                value,
            },
            (None, _, None) => {
                return Err(ApiError::validation(format!(
                    "One or more parameter values were invalid: Value must be provided when Exists is true (on {name})"
                )));
            }
        };
        conditions.push(condition);
    }
    join(body, conditions)
}

/// `QueryFilter` or `ScanFilter`.
pub fn filter(body: &Json, parameter: &str) -> Result<Option<Condition>, ApiError> {
    let Some(filter) = map(body, parameter)? else {
        return Ok(None);
    };
    let mut conditions = Vec::new();
    for (name, spec) in filter {
        let operator = spec
            .get("ComparisonOperator")
            .and_then(Json::as_str)
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "{parameter}.{name}: ComparisonOperator is required"
                ))
            })?;
        conditions.push(comparison(name, operator, values(spec, name)?)?);
    }
    join(body, conditions)
}

/// `KeyConditions`: EQ on the partition key; on the sort key EQ, LT, LE,
/// GT, GE or BETWEEN.
pub fn key_conditions(body: &Json, partition_key: &str) -> Result<Option<KeyCondition>, ApiError> {
    let Some(conditions) = map(body, "KeyConditions")? else {
        return Ok(None);
    };
    let mut partition = None;
    let mut sort = None;
    for (name, spec) in conditions {
        let operator = spec
            .get("ComparisonOperator")
            .and_then(Json::as_str)
            .unwrap_or("");
        let mut list = values(spec, name)?;
        if name == partition_key {
            if operator != "EQ" || list.len() != 1 {
                return Err(ApiError::validation(format!(
                    "Query key condition not supported: the partition key {name} needs EQ with one value"
                )));
            }
            partition = Some((name.clone(), list.remove(0)));
            continue;
        }
        let single = |list: &mut Vec<AttributeValue>| {
            if list.len() == 1 {
                Ok(list.remove(0))
            } else {
                Err(ApiError::validation(format!(
                    "{operator} on {name} takes one value"
                )))
            }
        };
        let bounds = match operator {
            "EQ" => {
                let v = single(&mut list)?;
                SortCondition::Range(Bound::Included(v.clone()), Bound::Included(v))
            }
            "LT" => SortCondition::Range(Bound::Unbounded, Bound::Excluded(single(&mut list)?)),
            "LE" => SortCondition::Range(Bound::Unbounded, Bound::Included(single(&mut list)?)),
            "GT" => SortCondition::Range(Bound::Excluded(single(&mut list)?), Bound::Unbounded),
            "GE" => SortCondition::Range(Bound::Included(single(&mut list)?), Bound::Unbounded),
            "BETWEEN" if list.len() == 2 => {
                let high = list.pop().expect("two values");
                SortCondition::Range(
                    Bound::Included(list.pop().expect("two values")),
                    Bound::Included(high),
                )
            }
            "BEGINS_WITH" => SortCondition::BeginsWith(single(&mut list)?),
            other => {
                return Err(ApiError::validation(format!(
                    "Query key condition not supported: {other} on {name}"
                )));
            }
        };
        if sort.is_some() {
            return Err(ApiError::validation(
                "KeyConditions may name at most two attributes",
            ));
        }
        sort = Some((name.clone(), bounds));
    }
    let partition = partition.ok_or_else(|| {
        ApiError::validation(format!(
            "Query condition missed key schema element: {partition_key}"
        ))
    })?;
    Ok(Some(KeyCondition { partition, sort }))
}

/// `AttributeUpdates`: per attribute an `Action` (PUT, the default;
/// DELETE, of the attribute or of set elements; ADD) and a `Value`.
pub fn attribute_updates(body: &Json) -> Result<Option<Vec<UpdateAction>>, ApiError> {
    let Some(updates) = map(body, "AttributeUpdates")? else {
        return Ok(None);
    };
    let mut actions = Vec::new();
    for (name, spec) in updates {
        let value = spec_value(spec, name)?;
        let action = match (
            spec.get("Action").and_then(Json::as_str).unwrap_or("PUT"),
            value,
        ) {
            ("PUT", Some(value)) => UpdateAction::Set(Path::top(name.clone()), value),
            ("DELETE", None) => UpdateAction::Remove(Path::top(name.clone())),
            ("DELETE", Some(value)) => UpdateAction::Delete(Path::top(name.clone()), value),
            ("ADD", Some(value)) => UpdateAction::Add(Path::top(name.clone()), value),
            (action, _) => {
                return Err(ApiError::validation(format!(
                    "AttributeUpdates.{name}: Action {action} needs a Value (or is unknown)"
                )));
            }
        };
        actions.push(action);
    }
    Ok(Some(actions))
}

/// `AttributesToGet`: a list of names.
pub fn attributes_to_get(body: &Json) -> Result<Option<Vec<Path>>, ApiError> {
    match body.get("AttributesToGet") {
        None => Ok(None),
        Some(Json::Array(names)) if !names.is_empty() => names
            .iter()
            .map(|n| {
                n.as_str()
                    .map(Path::top)
                    .ok_or_else(|| ApiError::validation("AttributesToGet holds strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::validation(
            "AttributesToGet must be a non-empty list",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_parameters_map_onto_conditions_and_actions() {
        let body = json!({
            "Expected": {
                "a": {"Exists": false},
                "b": {"Value": {"N": "1"}},
                "c": {"ComparisonOperator": "BETWEEN", "AttributeValueList": [{"N": "1"}, {"N": "5"}]},
            },
            "ConditionalOperator": "OR",
        });
        let condition = expected(&body).unwrap().unwrap();
        assert!(matches!(condition, Condition::Or(..)));
        let item = cairn_common::Item::new().with("c", AttributeValue::N("3".parse().unwrap()));
        assert!(condition.holds(Some(&item)));
        assert!(expected(&json!({"Expected": {"a": {"Exists": true}}})).is_err());
        assert!(expected(&json!({"Expected": {"a": {"ComparisonOperator": "EQ"}}})).is_err());
        let filter = filter(&json!({"ScanFilter": {"t": {"ComparisonOperator": "NOT_CONTAINS", "AttributeValueList": [{"S": "x"}]}}}), "ScanFilter").unwrap().unwrap();
        assert!(matches!(filter, Condition::Not(_)));
        let keys = key_conditions(
            &json!({"KeyConditions": {
                "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p"}]},
                "sk": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "3"}]},
            }}),
            "pk",
        )
        .unwrap()
        .unwrap();
        assert_eq!(keys.partition.0, "pk");
        assert!(matches!(
            keys.sort,
            Some((
                _,
                SortCondition::Range(Bound::Excluded(_), Bound::Unbounded)
            ))
        ));
        let keys = key_conditions(
            &json!({"KeyConditions": {
                "pk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"S": "p"}]},
                "sk": {"ComparisonOperator": "BEGINS_WITH", "AttributeValueList": [{"S": "ab"}]},
            }}),
            "pk",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            keys.sort,
            Some((
                "sk".into(),
                SortCondition::BeginsWith(AttributeValue::S("ab".into()))
            ))
        );
        assert!(key_conditions(&json!({"KeyConditions": {"sk": {"ComparisonOperator": "EQ", "AttributeValueList": [{"N": "3"}]}}}), "pk").is_err());
        let actions = attribute_updates(&json!({"AttributeUpdates": {
            "a": {"Value": {"S": "x"}}, "b": {"Action": "DELETE"}, "c": {"Action": "ADD", "Value": {"N": "2"}},
        }})).unwrap().unwrap();
        assert_eq!(actions.len(), 3);
        assert!(matches!(actions[1], UpdateAction::Remove(_)));
        assert!(refuse_mixed(&json!({"Expected": {}, "ConditionExpression": "x"})).is_err());
        assert!(refuse_mixed(&json!({"Expected": {}})).is_ok());
        assert_eq!(
            attributes_to_get(&json!({"AttributesToGet": ["a", "b"]}))
                .unwrap()
                .unwrap(),
            [Path::top("a"), Path::top("b")]
        );
    }
}
