//! DynamoDB expressions, the subset that maps exactly onto Cairn's
//! conditions and update actions (docs/dynamodb-api.md lists it). Anything
//! outside it is refused with a ValidationException, never half-applied.
//!
//! Placeholders are resolved as they are read: `#name` from
//! ExpressionAttributeNames, `:value` from ExpressionAttributeValues.

use std::collections::HashMap;
use std::ops::Bound;

use cairn_common::AttributeValue;
use cairn_common::condition::{CompareOp, Condition};
use cairn_common::update::UpdateAction;
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
        if let Some(symbol) = ["=", "<", ">", "(", ")", ",", "+", "-", ".", "["]
            .into_iter()
            .find(|s| s.starts_with(c))
        {
            if symbol == "." || symbol == "[" {
                return err("nested attribute paths are not supported yet");
            }
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
}

impl Parser {
    fn new(text: &str, placeholders: &Placeholders) -> Result<Parser, ExprError> {
        Ok(Parser {
            tokens: tokenize(text, placeholders)?,
            at: 0,
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

    /// One condition atom: a function call or `name op :value`.
    fn atom(&mut self) -> Result<Condition, ExprError> {
        let word = self.name()?;
        let function = word.to_ascii_lowercase();
        if matches!(
            function.as_str(),
            "attribute_exists" | "attribute_not_exists" | "begins_with"
        ) && self.peek() == Some(&Token::Symbol("("))
        {
            self.symbol("(")?;
            let name = self.name()?;
            let condition = match function.as_str() {
                "attribute_exists" => Condition::Exists(name),
                "attribute_not_exists" => Condition::NotExists(name),
                _ => {
                    self.symbol(",")?;
                    Condition::BeginsWith {
                        attribute: name,
                        prefix: self.value()?,
                    }
                }
            };
            self.symbol(")")?;
            return Ok(condition);
        }
        let op = self.compare_op()?;
        Ok(Condition::Compare {
            attribute: word,
            op,
            value: self.value()?,
        })
    }
}

fn unsupported_if_more(parser: &Parser, what: &str) -> Result<(), ExprError> {
    if parser.done() {
        Ok(())
    } else {
        err(format!(
            "{what}: only a single condition is supported yet (no AND, OR, NOT, BETWEEN or IN)"
        ))
    }
}

/// A ConditionExpression: one comparison or function.
pub fn condition(text: &str, placeholders: &Placeholders) -> Result<Condition, ExprError> {
    let mut parser = Parser::new(text, placeholders)?;
    let condition = parser.atom()?;
    unsupported_if_more(&parser, "ConditionExpression")?;
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
                    let name = parser.name()?;
                    parser.symbol("=")?;
                    match parser.next() {
                        Some(Token::Value(value)) => actions.push(UpdateAction::Set(name, value)),
                        Some(Token::Word(operand)) if operand == name => {
                            let sign = parser.next();
                            let value = parser.value()?;
                            let value = match (sign, value) {
                                (Some(Token::Symbol("+")), value @ AttributeValue::N(_)) => value,
                                (Some(Token::Symbol("-")), AttributeValue::N(n)) => {
                                    AttributeValue::N(negate(&n))
                                }
                                _ => {
                                    return err(
                                        "SET supports `a = :v` and `a = a + :n` / `a = a - :n` only, yet",
                                    );
                                }
                            };
                            actions.push(UpdateAction::Add(name, value));
                        }
                        _ => {
                            return err(
                                "SET supports `a = :v` and `a = a + :n` / `a = a - :n` only, yet",
                            );
                        }
                    }
                }
                "REMOVE" => actions.push(UpdateAction::Remove(parser.name()?)),
                "ADD" => {
                    let name = parser.name()?;
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
    Ok(actions)
}

fn negate(n: &cairn_common::Number) -> cairn_common::Number {
    cairn_common::Number::from_parts(!n.is_negative(), n.significand(), i32::from(n.exponent()))
        .unwrap_or(*n)
}

/// A ProjectionExpression: top-level attribute names, comma-separated.
pub fn projection(text: &str, placeholders: &Placeholders) -> Result<Vec<String>, ExprError> {
    let mut parser = Parser::new(text, placeholders)?;
    let mut names = vec![parser.name()?];
    while !parser.done() {
        parser.symbol(",")?;
        names.push(parser.name()?);
    }
    Ok(names)
}

/// A KeyConditionExpression: the partition key's value, and the sort-key
/// bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyCondition {
    pub partition: (String, AttributeValue),
    pub sort: Option<(String, Bound<AttributeValue>, Bound<AttributeValue>)>,
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
    let sort_name = parser.name()?;
    let bounds = if parser.keyword("BETWEEN") {
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
    if !parser.done() {
        return err(
            "KeyConditionExpression: begins_with and further conditions are not supported yet",
        );
    }
    Ok(KeyCondition {
        partition,
        sort: Some((sort_name, bounds.0, bounds.1)),
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
        assert!(condition("a = :a AND b = :a", &p).is_err());
        assert!(condition("a = :missing", &p).is_err());
        let actions = update("SET #s = :a, n = n + :one REMOVE old ADD c :one", &p).unwrap();
        assert_eq!(actions.len(), 4);
        assert_eq!(
            actions[1],
            UpdateAction::Add("n".into(), AttributeValue::N("1".parse().unwrap()))
        );
        assert!(update("SET a.b = :a", &p).is_err());
        assert!(update("DELETE s :a", &p).is_err());
        let key = key_condition("pk = :a AND sk BETWEEN :a AND :z", &p).unwrap();
        assert_eq!(key.partition, ("pk".into(), AttributeValue::S("a".into())));
        assert!(matches!(
            key.sort,
            Some((_, Bound::Included(_), Bound::Included(_)))
        ));
        assert!(key_condition("pk = :a AND begins_with(sk, :a)", &p).is_err());
        assert_eq!(projection("a, #s,b", &p).unwrap(), vec!["a", "status", "b"]);
        assert!(projection("a b", &p).is_err());
    }
}
