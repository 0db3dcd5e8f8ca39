//! Conditions on a write (DynamoDB's ConditionExpression, in its common
//! forms): attribute exists / not exists, comparisons, begins_with.
//!
//! Comparison follows DynamoDB: `=` and `<>` compare any two values
//! (values of different types are unequal); ordering comparisons and
//! `begins_with` need both sides to be S, N or B of the same type, and are
//! false otherwise. A condition on a missing item sees no attributes.

use std::cmp::Ordering;

use crate::item::{AttributeValue, Item};

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A condition that must hold on the current item for a write to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Exists(String),
    NotExists(String),
    Compare {
        attribute: String,
        op: CompareOp,
        value: AttributeValue,
    },
    BeginsWith {
        attribute: String,
        prefix: AttributeValue,
    },
}

/// Orders two scalar values of the same type; `None` otherwise.
pub fn compare_scalars(a: &AttributeValue, b: &AttributeValue) -> Option<Ordering> {
    match (a, b) {
        (AttributeValue::S(x), AttributeValue::S(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (AttributeValue::N(x), AttributeValue::N(y)) => Some(x.cmp(y)),
        (AttributeValue::B(x), AttributeValue::B(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

impl Condition {
    /// Whether the condition holds on `item` (`None`: no item stored).
    pub fn holds(&self, item: Option<&Item>) -> bool {
        let get = |name: &str| item.and_then(|i| i.get(name));
        match self {
            Condition::Exists(name) => get(name).is_some(),
            Condition::NotExists(name) => get(name).is_none(),
            Condition::Compare {
                attribute,
                op,
                value,
            } => {
                let Some(current) = get(attribute) else {
                    return false;
                };
                match op {
                    CompareOp::Eq => current == value,
                    CompareOp::Ne => current != value,
                    _ => compare_scalars(current, value).is_some_and(|ordering| match op {
                        CompareOp::Lt => ordering == Ordering::Less,
                        CompareOp::Le => ordering != Ordering::Greater,
                        CompareOp::Gt => ordering == Ordering::Greater,
                        CompareOp::Ge => ordering != Ordering::Less,
                        CompareOp::Eq | CompareOp::Ne => unreachable!("handled above"),
                    }),
                }
            }
            Condition::BeginsWith { attribute, prefix } => match (get(attribute), prefix) {
                (Some(AttributeValue::S(s)), AttributeValue::S(p)) => s.starts_with(p.as_str()),
                (Some(AttributeValue::B(b)), AttributeValue::B(p)) => b.starts_with(p),
                _ => false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::number::Number;

    fn n(v: i64) -> AttributeValue {
        AttributeValue::N(Number::from_i64(v))
    }

    #[test]
    fn conditions_follow_dynamodb_semantics() {
        let item = Item::new()
            .with("count", n(5))
            .with("name", AttributeValue::S("alice".into()));
        let holds = |c: Condition| c.holds(Some(&item));
        assert!(holds(Condition::Exists("count".into())));
        assert!(!holds(Condition::NotExists("count".into())));
        assert!(Condition::NotExists("count".into()).holds(None));
        assert!(!Condition::Exists("count".into()).holds(None));
        let cmp = |op, value| Condition::Compare {
            attribute: "count".into(),
            op,
            value,
        };
        assert!(holds(cmp(CompareOp::Eq, n(5))));
        assert!(holds(cmp(CompareOp::Lt, n(6))));
        assert!(holds(cmp(CompareOp::Ge, n(5))));
        assert!(!holds(cmp(CompareOp::Gt, n(5))));
        // Different types: unequal, and never ordered.
        assert!(holds(cmp(CompareOp::Ne, AttributeValue::S("5".into()))));
        assert!(!holds(cmp(CompareOp::Lt, AttributeValue::S("9".into()))));
        let prefix = |p: &str| Condition::BeginsWith {
            attribute: "name".into(),
            prefix: AttributeValue::S(p.into()),
        };
        assert!(holds(prefix("ali")));
        assert!(!holds(prefix("bob")));
        assert!(!holds(Condition::BeginsWith {
            attribute: "count".into(),
            prefix: AttributeValue::S("5".into())
        }));
    }
}
