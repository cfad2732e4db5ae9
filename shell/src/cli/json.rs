//! JSON <-> google.protobuf.Struct for the CLI.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

pub fn to_value(j: serde_json::Value) -> Value {
    let kind = match j {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue { values: a.into_iter().map(to_value).collect() }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

pub fn to_struct(o: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: o.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

pub fn from_value(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, |n| {
            // Show integral numbers without ".0", as a person typed them.
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => serde_json::Value::from(f as i64),
                _ => serde_json::Value::Number(n),
            }
        }),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

pub fn from_struct(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_nested() {
        let j: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":[true,null,{"c":"x"}],"d":1.5}"#).unwrap();
        let serde_json::Value::Object(o) = j.clone() else { panic!() };
        assert_eq!(from_struct(&to_struct(o)), j);
    }
}
