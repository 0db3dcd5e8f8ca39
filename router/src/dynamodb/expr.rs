//! DynamoDB expressions, the subset that maps exactly onto Cairn's
//! conditions and update actions (docs/dynamodb-api.md lists it). Anything
//! outside it is refused with a ValidationException, never half-applied.
//!
//! Conditions (ConditionExpression, FilterExpression) follow DynamoDB's
//! grammar and precedence, loosest first: OR, AND, NOT, then a comparison,
//! BETWEEN, IN, a function or a parenthesized condition.
//!
//! Placeholders are resolved as they are read: `#name` from
//! ExpressionAttributeNames, `:value` from ExpressionAttributeValues.

use std::collections::HashMap;
use std::ops::Bound;

use cairn_common::condition::{
    CONDITION_DEPTH_MAX, CompareOp, Condition, IN_OPERANDS_MAX, Operand,
};
use cairn_common::path::PATH_STEPS_MAX;
use cairn_common::update::{SET_VALUE_DEPTH_MAX, SetValue, UpdateAction};
use cairn_common::{AttributeValue, Path, Step};
use serde_json::Value as Json;

use super::json::value_from_json;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError(message.into()))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An attribute name (placeholders already resolved) or a keyword.
    Word(String),
    /// A resolved `:value`.
    Value(AttributeValue),
    Symbol(&'static str),
}

/// The placeholders of one request.
#[derive(Debug, Default)]
pub struct Placeholders {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Placeholders {
    pub fn from_request(body: &Json) -> Result<Placeholders, ExprError> {
        let mut placeholders = Placeholders::default();
        if let Some(names) = body
            .get("ExpressionAttributeNames")
            .and_then(Json::as_object)
        {
            for (k, v) in names {
                let name = v
                    .as_str()
                    .ok_or_else(|| ExprError(format!("name of {k} must be a string")))?;
                placeholders.names.insert(k.clone(), name.to_owned());
            }
        }
        if let Some(values) = body
            .get("ExpressionAttributeValues")
            .and_then(Json::as_object)
        {
            for (k, v) in values {
                let value = value_from_json(v).map_err(|e| ExprError(format!("{k}: {e}")))?;
                placeholders.values.insert(k.clone(), value);
            }
        }
        Ok(placeholders)
    }
}

fn tokenize(text: &str, placeholders: &Placeholders) -> Result<Vec<Token>, ExprError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c.is_whitespace() {
            at += 1;
            continue;
        }
        let two: String = chars[at..(at + 2).min(chars.len())].iter().collect();
        if let Some(symbol) = ["<=", ">=", "<>"].into_iter().find(|s| *s == two) {
            tokens.push(Token::Symbol(symbol));
            at += 2;
            continue;
        }
        if let Some(symbol) = ["=", "<", ">", "(", ")", ",", "+", "-", ".", "[", "]"]
            .into_iter()
            .find(|s| s.starts_with(c))
        {
            tokens.push(Token::Symbol(symbol));
            at += 1;
            continue;
        }
        let start = at;
        while at < chars.len() && (chars[at].is_alphanumeric() || "_#:".contains(chars[at])) {
            at += 1;
        }
        if start == at {
            return err(format!("unexpected character {c:?} in expression"));
        }
        let word: String = chars[start..at].iter().collect();
        if let Some(placeholder) = word.strip_prefix('#') {
            let name = placeholders.names.get(&word).ok_or_else(|| {
                ExprError(format!(
                    "#{placeholder} is not defined in ExpressionAttributeNames"
                ))
            })?;
            tokens.push(Token::Word(name.clone()));
        } else if word.starts_with(':') {
            let value = placeholders.values.get(&word).ok_or_else(|| {
                ExprError(format!(
                    "{word} is not defined in ExpressionAttributeValues"
                ))
            })?;
            tokens.push(Token::Value(value.clone()));
        } else {
            tokens.push(Token::Word(word));
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Nesting of NOT and parentheses so far.
    depth: usize,
}

/// DynamoDB's limit on an expression's length.
const EXPRESSION_BYTES_MAX: usize = 4096;

/// The types `attribute_type` accepts.
const TYPE_NAMES: [&str; 10] = ["S", "N", "B", "BOOL", "NULL", "L", "M", "SS", "NS", "BS"];

impl Parser {
    fn new(text: &str, placeholders: &Placeholders) -> Result<Parser, ExprError> {
        if text.len() > EXPRESSION_BYTES_MAX {
            return err(format!(
                "Expression size has exceeded the maximum allowed size ({EXPRESSION_BYTES_MAX} bytes)"
            ));
        }
        Ok(Parser {
            tokens: tokenize(text, placeholders)?,
            at: 0,
            depth: 0,
        })
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn done(&self) -> bool {
        self.at >= self.tokens.len()
    }

    fn symbol(&mut self, symbol: &str) -> Result<(), ExprError> {
        match self.next() {
            Some(Token::Symbol(s)) if s == symbol => Ok(()),
            other => err(format!("expected {symbol:?}, found {other:?}")),
        }
    }

    fn name(&mut self) -> Result<String, ExprError> {
        match self.next() {
            Some(Token::Word(word)) => Ok(word),
            other => err(format!("expected an attribute name, found {other:?}")),
        }
    }

    /// A document path: a name, then `.name` and `[index]` steps.
    fn path(&mut self) -> Result<Path, ExprError> {
        let name = self.name()?;
        self.path_from(name)
    }

    /// The steps of a path whose first name has been read.
    fn path_from(&mut self, name: String) -> Result<Path, ExprError> {
        let mut path = Path::top(name);
        loop {
            let step = match self.peek() {
                Some(Token::Symbol(".")) => {
                    self.next();
                    Step::Key(self.name()?)
                }
                Some(Token::Symbol("[")) => {
                    self.next();
                    let index = match self.next() {
                        Some(Token::Word(digits)) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                            digits.parse::<u32>().map_err(|_| {
                                ExprError(format!("list index {digits} is too large"))
                            })?
                        }
                        other => return err(format!("expected a list index, found {other:?}")),
                    };
                    self.symbol("]")?;
                    Step::Index(index)
                }
                _ => return Ok(path),
            };
            if path.steps.len() == PATH_STEPS_MAX {
                return err(format!(
                    "a document path nests at most {} levels",
                    PATH_STEPS_MAX + 1
                ));
            }
            path.steps.push(step);
        }
    }

    fn value(&mut self) -> Result<AttributeValue, ExprError> {
        match self.next() {
            Some(Token::Value(value)) => Ok(value),
            other => err(format!("expected a :value placeholder, found {other:?}")),
        }
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(keyword));
        if found {
            self.at += 1;
        }
        found
    }

    fn compare_op(&mut self) -> Result<CompareOp, ExprError> {
        Ok(match self.next() {
            Some(Token::Symbol("=")) => CompareOp::Eq,
            Some(Token::Symbol("<>")) => CompareOp::Ne,
            Some(Token::Symbol("<")) => CompareOp::Lt,
            Some(Token::Symbol("<=")) => CompareOp::Le,
            Some(Token::Symbol(">")) => CompareOp::Gt,
            Some(Token::Symbol(">=")) => CompareOp::Ge,
            other => return err(format!("expected a comparison, found {other:?}")),
        })
    }

    /// The right side of a SET: an operand, or two joined by `+` or `-`.
    fn set_value(&mut self, depth: usize) -> Result<SetValue, ExprError> {
        if depth > SET_VALUE_DEPTH_MAX {
            return err(format!(
                "SET expressions nested deeper than {SET_VALUE_DEPTH_MAX} are not supported"
            ));
        }
        let left = self.set_operand(depth)?;
        let joined = match self.peek() {
            Some(Token::Symbol("+")) => SetValue::Plus,
            Some(Token::Symbol("-")) => SetValue::Minus,
            _ => return Ok(left),
        };
        self.next();
        let right = self.set_operand(depth)?;
        Ok(joined(Box::new(left), Box::new(right)))
    }

    /// A `:value`, an attribute, `if_not_exists(a, x)` or
    /// `list_append(x, y)`.
    fn set_operand(&mut self, depth: usize) -> Result<SetValue, ExprError> {
        match self.next() {
            Some(Token::Value(value)) => Ok(SetValue::Value(value)),
            Some(Token::Word(word)) if self.peek() == Some(&Token::Symbol("(")) => {
                self.symbol("(")?;
                let value = match word.to_ascii_lowercase().as_str() {
                    "if_not_exists" => {
                        let name = self.path()?;
                        self.symbol(",")?;
                        SetValue::IfNotExists(name, Box::new(self.set_value(depth + 1)?))
                    }
                    "list_append" => {
                        let first = self.set_value(depth + 1)?;
                        self.symbol(",")?;
                        SetValue::ListAppend(Box::new(first), Box::new(self.set_value(depth + 1)?))
                    }
                    other => {
                        return err(format!("Invalid function name in SET; function: {other}"));
                    }
                };
                self.symbol(")")?;
                Ok(value)
            }
            Some(Token::Word(word)) => Ok(SetValue::Attribute(self.path_from(word)?)),
            other => err(format!("expected a SET operand, found {other:?}")),
        }
    }

    fn nested<T>(
        &mut self,
        parse: impl FnOnce(&mut Parser) -> Result<T, ExprError>,
    ) -> Result<T, ExprError> {
        self.depth += 1;
        if self.depth > CONDITION_DEPTH_MAX {
            return err(format!(
                "conditions nested deeper than {CONDITION_DEPTH_MAX} are not supported"
            ));
        }
        let parsed = parse(self);
        self.depth -= 1;
        parsed
    }

    /// `a OR b OR …`
    fn or(&mut self) -> Result<Condition, ExprError> {
        let mut left = self.and()?;
        while self.keyword("OR") {
            left = Condition::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    /// `a AND b AND …`
    fn and(&mut self) -> Result<Condition, ExprError> {
        let mut left = self.not()?;
        while self.keyword("AND") {
            left = Condition::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Condition, ExprError> {
        if self.keyword("NOT") {
            let inner = self.nested(Parser::not)?;
            return Ok(Condition::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn followed_by_parenthesis(&self) -> bool {
        self.tokens.get(self.at + 1) == Some(&Token::Symbol("("))
    }

    /// A parenthesized condition, a function, or a comparison.
    fn primary(&mut self) -> Result<Condition, ExprError> {
        if self.peek() == Some(&Token::Symbol("(")) {
            self.next();
            let inner = self.nested(Parser::or)?;
            self.symbol(")")?;
            return Ok(inner);
        }
        if let Some(Token::Word(word)) = self.peek()
            && self.followed_by_parenthesis()
        {
            let function = word.to_ascii_lowercase();
            if function != "size" {
                return self.function(&function);
            }
        }
        let left = self.operand()?;
        if self.keyword("BETWEEN") {
            let low = self.operand()?;
            if !self.keyword("AND") {
                return err("BETWEEN needs AND between its bounds");
            }
            let high = self.operand()?;
            return Ok(Condition::Between {
                value: left,
                low,
                high,
            });
        }
        if self.keyword("IN") {
            self.symbol("(")?;
            let mut list = vec![self.operand()?];
            while self.peek() == Some(&Token::Symbol(",")) {
                self.next();
                list.push(self.operand()?);
            }
            self.symbol(")")?;
            if list.len() > IN_OPERANDS_MAX {
                return err(format!("IN takes at most {IN_OPERANDS_MAX} operands"));
            }
            return Ok(Condition::In { value: left, list });
        }
        let op = self.compare_op()?;
        let right = self.operand()?;
        Ok(match (left, right) {
            (Operand::Attribute(attribute), Operand::Value(value)) => Condition::Compare {
                attribute,
                op,
                value,
            },
            (left, right) => Condition::CompareOperands { left, op, right },
        })
    }

    /// An attribute, a `:value`, or `size(attribute)`.
    fn operand(&mut self) -> Result<Operand, ExprError> {
        match self.next() {
            Some(Token::Word(word))
                if word.eq_ignore_ascii_case("size")
                    && self.peek() == Some(&Token::Symbol("(")) =>
            {
                self.symbol("(")?;
                let path = self.path()?;
                self.symbol(")")?;
                Ok(Operand::Size(path))
            }
            Some(Token::Word(word)) => Ok(Operand::Attribute(self.path_from(word)?)),
            Some(Token::Value(value)) => Ok(Operand::Value(value)),
            other => err(format!(
                "expected an attribute, a :value or size(), found {other:?}"
            )),
        }
    }

    fn function(&mut self, function: &str) -> Result<Condition, ExprError> {
        self.next();
        self.symbol("(")?;
        let name = self.path()?;
        let condition = match function {
            "attribute_exists" => Condition::Exists(name),
            "attribute_not_exists" => Condition::NotExists(name),
            "begins_with" => {
                self.symbol(",")?;
                match self.operand()? {
                    Operand::Size(_) => return err("begins_with takes no size() as its prefix"),
                    prefix => Condition::BeginsWith {
                        attribute: name,
                        prefix,
                    },
                }
            }
            "contains" => {
                self.symbol(",")?;
                Condition::Contains {
                    attribute: name,
                    operand: self.operand()?,
                }
            }
            "attribute_type" => {
                self.symbol(",")?;
                match self.value()? {
                    AttributeValue::S(type_name) if TYPE_NAMES.contains(&type_name.as_str()) => {
                        Condition::AttributeType {
                            attribute: name,
                            type_name,
                        }
                    }
                    other => {
                        return err(format!(
                            "attribute_type needs one of {TYPE_NAMES:?} as a string, not {other:?}"
                        ));
                    }
                }
            }
            other => return err(format!("Invalid function name; function: {other}")),
        };
        self.symbol(")")?;
        Ok(condition)
    }
}

/// A ConditionExpression or FilterExpression.
pub fn condition(text: &str, placeholders: &Placeholders) -> Result<Condition, ExprError> {
    let mut parser = Parser::new(text, placeholders)?;
    let condition = parser.or()?;
    if !parser.done() {
        return err(format!(
            "unexpected {:?} after a complete condition",
            parser.peek()
        ));
    }
    Ok(condition)
}

/// An UpdateExpression: `SET a = :v, b = b + :n`, `REMOVE a, b`, `ADD a :v`.
pub fn update(text: &str, placeholders: &Placeholders) -> Result<Vec<UpdateAction>, ExprError> {
    let mut parser = Parser::new(text, placeholders)?;
    let mut actions = Vec::new();
    while !parser.done() {
        let clause = parser.name()?.to_ascii_uppercase();
        loop {
            match clause.as_str() {
                "SET" => {
                    let name = parser.path()?;
                    parser.symbol("=")?;
                    actions.push(match parser.set_value(0)? {
                        SetValue::Value(value) => UpdateAction::Set(name, value),
                        other => UpdateAction::SetTo(name, other),
                    });
                }
                "DELETE" => {
                    let name = parser.path()?;
                    actions.push(UpdateAction::Delete(name, parser.value()?));
                }
                "REMOVE" => actions.push(UpdateAction::Remove(parser.path()?)),
                "ADD" => {
                    let name = parser.path()?;
                    actions.push(UpdateAction::Add(name, parser.value()?));
                }
                other => return err(format!("update clause {other} is not supported yet")),
            }
            if parser.peek() == Some(&Token::Symbol(",")) {
                parser.next();
            } else {
                break;
            }
        }
    }
    if actions.is_empty() {
        return err("UpdateExpression is empty");
    }
    refuse_overlaps(actions.iter().map(UpdateAction::path))?;
    Ok(actions)
}

/// DynamoDB refuses two paths where one is the other or lies under it.
fn refuse_overlaps<'a>(paths: impl Iterator<Item = &'a Path> + Clone) -> Result<(), ExprError> {
    for (i, one) in paths.clone().enumerate() {
        if let Some(two) = paths.clone().skip(i + 1).find(|two| one.overlaps(two)) {
            return err(format!(
                "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [{one}], path two: [{two}]"
            ));
        }
    }
    Ok(())
}

/// A ProjectionExpression: document paths, comma-separated.
pub fn projection(text: &str, placeholders: &Placeholders) -> Result<Vec<Path>, ExprError> {
    let mut parser = Parser::new(text, placeholders)?;
    let mut paths = vec![parser.path()?];
    while !parser.done() {
        parser.symbol(",")?;
        paths.push(parser.path()?);
    }
    refuse_overlaps(paths.iter())?;
    Ok(paths)
}

/// A KeyConditionExpression: the partition key's value, and the sort-key
/// bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyCondition {
    pub partition: (String, AttributeValue),
    pub sort: Option<(String, SortCondition)>,
}

/// What a Query asks of the sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SortCondition {
    Range(Bound<AttributeValue>, Bound<AttributeValue>),
    /// `begins_with(sk, :prefix)`.
    BeginsWith(AttributeValue),
}

/// `pk = :v [AND sk op :w | AND sk BETWEEN :a AND :b]`.
pub fn key_condition(text: &str, placeholders: &Placeholders) -> Result<KeyCondition, ExprError> {
    let mut parser = Parser::new(text, placeholders)?;
    let partition_name = parser.name()?;
    parser.symbol("=")?;
    let partition = (partition_name, parser.value()?);
    if parser.done() {
        return Ok(KeyCondition {
            partition,
            sort: None,
        });
    }
    if !parser.keyword("AND") {
        return err("KeyConditionExpression: expected AND after the partition key condition");
    }
    if let Some(Token::Word(word)) = parser.peek()
        && word.eq_ignore_ascii_case("begins_with")
        && parser.followed_by_parenthesis()
    {
        parser.next();
        parser.symbol("(")?;
        let sort_name = parser.name()?;
        parser.symbol(",")?;
        let prefix = parser.value()?;
        parser.symbol(")")?;
        return finish(
            parser,
            partition,
            (sort_name, SortCondition::BeginsWith(prefix)),
        );
    }
    let sort_name = parser.name()?;
    let (start, end) = if parser.keyword("BETWEEN") {
        let low = parser.value()?;
        if !parser.keyword("AND") {
            return err("BETWEEN needs AND");
        }
        (Bound::Included(low), Bound::Included(parser.value()?))
    } else {
        let op = parser.compare_op()?;
        let value = parser.value()?;
        match op {
            CompareOp::Eq => (Bound::Included(value.clone()), Bound::Included(value)),
            CompareOp::Lt => (Bound::Unbounded, Bound::Excluded(value)),
            CompareOp::Le => (Bound::Unbounded, Bound::Included(value)),
            CompareOp::Gt => (Bound::Excluded(value), Bound::Unbounded),
            CompareOp::Ge => (Bound::Included(value), Bound::Unbounded),
            CompareOp::Ne => return err("<> is not allowed in a KeyConditionExpression"),
        }
    };
    finish(
        parser,
        partition,
        (sort_name, SortCondition::Range(start, end)),
    )
}

/// The end of a KeyConditionExpression: nothing may follow the sort-key
/// condition.
fn finish(
    parser: Parser,
    partition: (String, AttributeValue),
    sort: (String, SortCondition),
) -> Result<KeyCondition, ExprError> {
    if !parser.done() {
        return err("KeyConditionExpression: a key condition takes at most one sort-key condition");
    }
    Ok(KeyCondition {
        partition,
        sort: Some(sort),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn placeholders() -> Placeholders {
        Placeholders::from_request(&json!({
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":a": {"S": "a"}, ":z": {"S": "z"}}
        }))
        .unwrap()
    }

    #[test]
    fn conditions_updates_and_key_conditions_parse() {
        let p = placeholders();
        assert_eq!(
            condition("attribute_not_exists(id)", &p).unwrap(),
            Condition::NotExists("id".into())
        );
        assert_eq!(
            condition("#s <> :a", &p).unwrap(),
            Condition::Compare {
                attribute: "status".into(),
                op: CompareOp::Ne,
                value: AttributeValue::S("a".into())
            }
        );
        assert!(condition("a = :missing", &p).is_err());
        let actions = update("SET #s = :a, n = n + :one REMOVE old ADD c :one", &p).unwrap();
        assert_eq!(actions.len(), 4);
        assert_eq!(
            actions[1],
            UpdateAction::SetTo(
                "n".into(),
                SetValue::Plus(
                    Box::new(SetValue::Attribute("n".into())),
                    Box::new(SetValue::Value(AttributeValue::N("1".parse().unwrap())))
                )
            )
        );
        assert_eq!(
            update("SET a.#s[2].b = :a", &p).unwrap(),
            vec![UpdateAction::Set(
                Path::top("a")
                    .then(Step::Key("status".into()))
                    .then(Step::Index(2))
                    .then(Step::Key("b".into())),
                AttributeValue::S("a".into())
            )]
        );
        // Overlapping paths, malformed indexes and over-deep paths.
        for bad in [
            "SET a = :a, a.b = :a",
            "SET a[1] = :a REMOVE a[1]",
            "REMOVE a[x]",
            "REMOVE a[-1]",
            "REMOVE a[99999999999]",
            "REMOVE a.",
            "REMOVE a[1",
        ] {
            assert!(update(bad, &p).is_err(), "{bad}");
        }
        let deep = format!("REMOVE a{}", ".b".repeat(PATH_STEPS_MAX + 1));
        assert!(update(&deep, &p).is_err());
        assert!(update("REMOVE a[1], a[2], a.b, c", &p).is_ok());
        assert!(projection("a.b, a", &p).is_err());
        assert_eq!(
            condition("size(a[0]) > :one AND begins_with(b.c, d)", &p).unwrap(),
            Condition::And(
                Box::new(Condition::CompareOperands {
                    left: Operand::Size(Path::top("a").then(Step::Index(0))),
                    op: CompareOp::Gt,
                    right: Operand::Value(AttributeValue::N("1".parse().unwrap())),
                }),
                Box::new(Condition::BeginsWith {
                    attribute: Path::top("b").then(Step::Key("c".into())),
                    prefix: Operand::Attribute(Path::top("d")),
                })
            )
        );
        assert_eq!(
            update("DELETE s :a", &p).unwrap(),
            vec![UpdateAction::Delete(
                "s".into(),
                AttributeValue::S("a".into())
            )]
        );
        let counter = update(
            "SET c = if_not_exists(c, :one) + :one, l = list_append(l, :a)",
            &p,
        )
        .unwrap();
        assert!(
            matches!(&counter[0], UpdateAction::SetTo(_, SetValue::Plus(a, _))
            if matches!(**a, SetValue::IfNotExists(..)))
        );
        assert!(matches!(
            &counter[1],
            UpdateAction::SetTo(_, SetValue::ListAppend(..))
        ));
        assert!(update("SET c = frob(c)", &p).is_err());
        assert!(update("SET c = :one +", &p).is_err());
        let key = key_condition("pk = :a AND sk BETWEEN :a AND :z", &p).unwrap();
        assert_eq!(key.partition, ("pk".into(), AttributeValue::S("a".into())));
        assert!(matches!(
            key.sort,
            Some((
                _,
                SortCondition::Range(Bound::Included(_), Bound::Included(_))
            ))
        ));
        let key = key_condition("pk = :a AND begins_with(sk, :z)", &p).unwrap();
        assert_eq!(
            key.sort,
            Some((
                "sk".into(),
                SortCondition::BeginsWith(AttributeValue::S("z".into()))
            ))
        );
        assert!(key_condition("pk = :a AND begins_with(sk, :a) AND x = :a", &p).is_err());
        assert!(key_condition("pk = :a AND begins_with(sk :a)", &p).is_err());
        assert_eq!(
            projection("a, #s,b", &p).unwrap(),
            vec![Path::top("a"), Path::top("status"), Path::top("b")]
        );
        assert!(projection("a b", &p).is_err());
    }

    #[test]
    fn conditions_combine_with_dynamodb_precedence() {
        let p = placeholders();
        let a = || Condition::Compare {
            attribute: "a".into(),
            op: CompareOp::Eq,
            value: AttributeValue::S("a".into()),
        };
        let exists = |n: &str| Condition::Exists(n.into());
        // AND binds tighter than OR, NOT tighter than AND.
        assert_eq!(
            condition(
                "a = :a OR attribute_exists(b) AND NOT attribute_exists(c)",
                &p
            )
            .unwrap(),
            Condition::Or(
                Box::new(a()),
                Box::new(Condition::And(
                    Box::new(exists("b")),
                    Box::new(Condition::Not(Box::new(exists("c"))))
                ))
            )
        );
        assert_eq!(
            condition(
                "(a = :a OR attribute_exists(b)) AND attribute_exists(c)",
                &p
            )
            .unwrap(),
            Condition::And(
                Box::new(Condition::Or(Box::new(a()), Box::new(exists("b")))),
                Box::new(exists("c"))
            )
        );
        assert!(matches!(
            condition("#s BETWEEN :a AND :z", &p).unwrap(),
            Condition::Between { .. }
        ));
        assert!(matches!(
            condition("#s IN (:a, :z, other)", &p).unwrap(),
            Condition::In { ref list, .. } if list.len() == 3
        ));
        assert!(matches!(
            condition("size(#s) > :one", &p).unwrap(),
            Condition::CompareOperands {
                left: Operand::Size(_),
                ..
            }
        ));
        assert!(matches!(
            condition("a < b", &p).unwrap(),
            Condition::CompareOperands {
                left: Operand::Attribute(_),
                right: Operand::Attribute(_),
                ..
            }
        ));
        assert!(matches!(
            condition("contains(tags, :a)", &p).unwrap(),
            Condition::Contains { .. }
        ));
        assert!(
            condition("attribute_type(a, :a)", &p).is_err(),
            "\"a\" is no type"
        );
        assert!(condition("frobnicate(a)", &p).is_err());
        assert!(condition("a = :a b = :a", &p).is_err());
        assert!(condition("(a = :a", &p).is_err());
        let deep = format!("{}a = :a{}", "(".repeat(100), ")".repeat(100));
        assert!(condition(&deep, &p).unwrap_err().0.contains("deeper"));
        let long = vec!["a = :a"; 700].join(" AND ");
        assert!(
            condition(&long, &p)
                .unwrap_err()
                .0
                .contains("maximum allowed size")
        );
    }
}
