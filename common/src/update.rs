//! UpdateItem actions: set an attribute, remove it, or add to it (DynamoDB's
//! `ADD`: a number is incremented exactly, a set gains elements; a missing
//! attribute starts from the operand).

use crate::item::{AttributeValue, Item, ItemError};

/// One change UpdateItem makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateAction {
    Set(String, AttributeValue),
    Remove(String),
    /// Add a number to a number, or elements to a set of the same type.
    Add(String, AttributeValue),
}

impl UpdateAction {
    pub fn attribute(&self) -> &str {
        match self {
            UpdateAction::Set(name, _)
            | UpdateAction::Remove(name)
            | UpdateAction::Add(name, _) => name,
        }
    }
}

/// Applies `actions` to `item` in order.
pub fn apply(item: &mut Item, actions: &[UpdateAction]) -> Result<(), ItemError> {
    for action in actions {
        match action {
            UpdateAction::Set(name, value) => {
                item.insert(name.clone(), value.clone());
            }
            UpdateAction::Remove(name) => {
                item.remove(name);
            }
            UpdateAction::Add(name, operand) => {
                let sum = add(name, item.get(name), operand)?;
                item.insert(name.clone(), sum);
            }
        }
    }
    Ok(())
}

fn add(
    name: &str,
    current: Option<&AttributeValue>,
    operand: &AttributeValue,
) -> Result<AttributeValue, ItemError> {
    let mismatch = |found: &AttributeValue| ItemError::InvalidAdd {
        name: name.to_owned(),
        reason: format!(
            "cannot ADD {} to {}",
            operand.type_name(),
            found.type_name()
        ),
    };
    Ok(match (current, operand) {
        (
            None,
            AttributeValue::N(_)
            | AttributeValue::Ss(_)
            | AttributeValue::Ns(_)
            | AttributeValue::Bs(_),
        ) => operand.clone(),
        (Some(AttributeValue::N(a)), AttributeValue::N(b)) => {
            AttributeValue::N(a.checked_add(b).map_err(|e| ItemError::InvalidAdd {
                name: name.to_owned(),
                reason: e.to_string(),
            })?)
        }
        (Some(AttributeValue::Ss(a)), AttributeValue::Ss(b)) => {
            AttributeValue::Ss(a.union(b).cloned().collect())
        }
        (Some(AttributeValue::Ns(a)), AttributeValue::Ns(b)) => {
            AttributeValue::Ns(a.union(b).copied().collect())
        }
        (Some(AttributeValue::Bs(a)), AttributeValue::Bs(b)) => {
            AttributeValue::Bs(a.union(b).cloned().collect())
        }
        (Some(found), _) => return Err(mismatch(found)),
        (None, _) => {
            return Err(ItemError::InvalidAdd {
                name: name.to_owned(),
                reason: format!("ADD takes a number or a set, not {}", operand.type_name()),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> AttributeValue {
        AttributeValue::N(text.parse().unwrap())
    }

    #[test]
    fn add_increments_numbers_and_extends_sets() {
        let mut item = Item::new().with("count", n("1.5"));
        apply(
            &mut item,
            &[
                UpdateAction::Add("count".into(), n("2.25")),
                UpdateAction::Add("fresh".into(), n("-3")),
            ],
        )
        .unwrap();
        assert_eq!(item.get("count"), Some(&n("3.75")));
        assert_eq!(item.get("fresh"), Some(&n("-3")));
        let tags = |t: &[&str]| AttributeValue::Ss(t.iter().map(|s| (*s).to_owned()).collect());
        apply(
            &mut item,
            &[
                UpdateAction::Add("tags".into(), tags(&["a"])),
                UpdateAction::Add("tags".into(), tags(&["b", "a"])),
            ],
        )
        .unwrap();
        assert_eq!(item.get("tags"), Some(&tags(&["a", "b"])));
        apply(
            &mut item,
            &[
                UpdateAction::Remove("tags".into()),
                UpdateAction::Set("s".into(), AttributeValue::Null),
            ],
        )
        .unwrap();
        assert_eq!(item.get("tags"), None);
        assert_eq!(item.get("s"), Some(&AttributeValue::Null));
    }

    #[test]
    fn add_refuses_wrong_types_and_overflow() {
        let mut item = Item::new()
            .with("name", AttributeValue::S("x".into()))
            .with("big", n(&"9".repeat(38)));
        assert!(matches!(
            apply(&mut item, &[UpdateAction::Add("name".into(), n("1"))]),
            Err(ItemError::InvalidAdd { .. })
        ));
        assert!(matches!(
            apply(
                &mut item,
                &[UpdateAction::Add(
                    "new".into(),
                    AttributeValue::S("x".into())
                )]
            ),
            Err(ItemError::InvalidAdd { .. })
        ));
        assert!(matches!(
            apply(&mut item, &[UpdateAction::Add("big".into(), n("0.1"))]),
            Err(ItemError::InvalidAdd { .. })
        ));
    }
}
