//! Event data between JSON and Rhai values: `event.data` as a script sees it, and what a
//! script emits, enqueues or stores, back as JSON.
//!
//! The kinds of value data is made of (unit, booleans, numbers, strings, characters,
//! arrays and maps) are converted directly, which is several times cheaper than going
//! through serde for every field of every event. Anything else a script can build
//! (functions, timestamps, shared or host values) goes through Rhai's serde support, which
//! converts what it can and names what it cannot, so the results and the errors are those
//! of serde either way.

use rhai::{Dynamic, EvalAltResult};
use serde_json::Value;

use super::host::runtime_error;
use crate::event::limits::MAX_DATA_DEPTH;

/// Converts script data to JSON; fails for values JSON cannot carry (functions, handles)
/// and for data nested deeper than events may be (`MAX_DATA_DEPTH`), which no broker
/// could read back.
pub fn to_json(value: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    if let Some(json) = plain_json(value, 0) {
        return Ok(json);
    }
    let json = rhai::serde::from_dynamic::<Value>(value)?;
    let depth = crate::event::data_depth(&json);
    if depth > MAX_DATA_DEPTH {
        return Err(runtime_error(format!(
            "data nested {depth} levels deep (at most {MAX_DATA_DEPTH})"
        )));
    }
    Ok(json)
}

/// `value` as JSON when it is made of data's kinds only and nested no deeper than events
/// may be; `None` otherwise (`to_json` then takes the general way). `depth` counts the
/// arrays and maps around `value`.
fn plain_json(value: &Dynamic, depth: usize) -> Option<Value> {
    if value.is_shared() {
        return None;
    }
    if let Ok(map) = value.as_map_ref() {
        if depth >= MAX_DATA_DEPTH {
            return None;
        }
        let mut out = serde_json::Map::with_capacity(map.len());
        for (key, item) in map.iter() {
            out.insert(key.to_string(), plain_json(item, depth + 1)?);
        }
        return Some(Value::Object(out));
    }
    if let Ok(text) = value.as_immutable_string_ref() {
        return Some(Value::String(text.as_str().to_owned()));
    }
    if let Ok(n) = value.as_int() {
        return Some(Value::from(n));
    }
    if let Ok(x) = value.as_float() {
        // As serde_json writes a float: not finite, it is null.
        return Some(serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number));
    }
    if let Ok(b) = value.as_bool() {
        return Some(Value::Bool(b));
    }
    if value.is_unit() {
        return Some(Value::Null);
    }
    if let Ok(items) = value.as_array_ref() {
        if depth >= MAX_DATA_DEPTH {
            return None;
        }
        return items
            .iter()
            .map(|item| plain_json(item, depth + 1))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(c) = value.as_char() {
        return Some(Value::String(c.to_string()));
    }
    None
}

/// Converts JSON to script data. Every JSON value has a Rhai counterpart: integers that
/// fit in an `i64` are integers, other numbers floats.
pub fn to_dynamic(value: &Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => text.as_str().into(),
        Value::Array(items) => Dynamic::from_array(items.iter().map(to_dynamic).collect()),
        Value::Object(map) => Dynamic::from_map(
            map.iter()
                .map(|(key, item)| (key.as_str().into(), to_dynamic(item)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rhai::{Array, Map};

    /// Any JSON value, nested a few levels, with the numbers at the edges of `i64` and
    /// `u64` and strings with characters outside ASCII.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0)].prop_map(Value::from),
            Just(Value::from(u64::MAX)),
            (-1e300f64..1e300).prop_map(Value::from),
            "[a-zé\u{1F600} \"\\\\]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-z_é]{0,6}", inner), 0..6)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
    }

    /// What serde's way makes of `value`, the reference the direct conversions must match.
    fn by_serde(value: &Dynamic) -> Result<Value, String> {
        rhai::serde::from_dynamic::<Value>(value).map_err(|e| e.to_string())
    }

    proptest! {
        #[test]
        fn json_to_script_data_is_what_serde_makes(value in json()) {
            let direct = to_dynamic(&value);
            let serde = rhai::serde::to_dynamic(&value).expect("every JSON value converts");
            // The debug form tells an integer from a float, and shows every key and item.
            prop_assert_eq!(format!("{direct:?}"), format!("{serde:?}"));
        }

        #[test]
        fn script_data_to_json_is_what_serde_makes(value in json()) {
            let data = rhai::serde::to_dynamic(&value).expect("every JSON value converts");
            prop_assert_eq!(to_json(&data).map_err(|e| e.to_string()), by_serde(&data));
        }
    }

    #[test]
    fn the_kinds_json_has_no_own_form_for_convert_as_serde_converts_them() {
        let mut map = Map::new();
        map.insert("letter".into(), Dynamic::from_char('é'));
        map.insert("nan".into(), Dynamic::from_float(f64::NAN));
        map.insert("infinite".into(), Dynamic::from_float(f64::INFINITY));
        map.insert("nothing".into(), Dynamic::UNIT);
        map.insert("float".into(), Dynamic::from_float(1.0));
        let data = Dynamic::from_map(map);
        assert!(plain_json(&data, 0).is_some(), "converted directly");
        assert_eq!(to_json(&data).ok(), by_serde(&data).ok());
        assert_eq!(
            to_json(&data).ok(),
            Some(serde_json::json!({
                "float": 1.0, "infinite": null, "letter": "é", "nan": null, "nothing": null
            }))
        );
    }

    #[test]
    fn what_json_cannot_carry_is_refused_as_serde_refuses_it() {
        let mut map = Map::new();
        map.insert(
            "f".into(),
            Dynamic::from(rhai::FnPtr::new("f").expect("a name")),
        );
        let data = Dynamic::from_map(map);
        assert!(plain_json(&data, 0).is_none(), "left to serde");
        let direct = to_json(&data).map_err(|e| e.to_string());
        assert!(direct.is_err(), "{direct:?}");
        assert_eq!(direct, by_serde(&data));
    }

    #[test]
    fn a_shared_value_is_left_to_serde() {
        let shared = Dynamic::from_int(7).into_shared();
        let data = Dynamic::from_array(Array::from([shared]));
        assert!(plain_json(&data, 0).is_none(), "left to serde");
        assert_eq!(to_json(&data).map_err(|e| e.to_string()), by_serde(&data));
    }

    #[test]
    fn data_nested_too_deep_is_refused_with_its_depth() {
        let mut data = Dynamic::from_int(1);
        for _ in 0..MAX_DATA_DEPTH {
            data = Dynamic::from_array(Array::from([data]));
        }
        assert!(
            to_json(&data).is_ok(),
            "{MAX_DATA_DEPTH} levels are allowed"
        );
        let deeper = Dynamic::from_array(Array::from([data]));
        let error = to_json(&deeper).expect_err("too deep").to_string();
        assert!(
            error.contains(&format!(
                "data nested {} levels deep (at most {MAX_DATA_DEPTH})",
                MAX_DATA_DEPTH + 1
            )),
            "{error}"
        );
    }
}
