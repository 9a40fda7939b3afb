//! Tool schemas as clients see them: compacted, since clients send tools/list with every turn.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use schemars::JsonSchema;

/// Compacts every tool's schemas in place. Input schemas lose what tells a model nothing
/// ([`compact_schema`]) and the `null` of optional arguments; output schemas keep their shape,
/// field names and scalar types (clients validate `structuredContent` against them, and untyped
/// `{}` properties are flagged by MCP Inspector), not descriptions or `required`.
pub(super) fn compact_router<S>(router: &mut ToolRouter<S>) {
    for route in router.map.values_mut() {
        let mut input = compact_schema(&route.attr.input_schema);
        drop_null_unions(&mut input);
        route.attr.input_schema = Arc::new(input);
        if let Some(out) = &route.attr.output_schema {
            let mut shape = compact_schema(&inline_definitions(out));
            strip_keys(&mut shape, &["description", "required"]);
            // Optional result fields are left out, never null (except `exit_code`).
            drop_null_unions(&mut shape);
            route.attr.output_schema = Some(Arc::new(shape));
        }
    }
}

/// The output schema of a result type (before compaction).
pub(super) fn output_schema<T: JsonSchema + 'static>() -> Arc<rmcp::model::JsonObject> {
    rmcp::handler::server::common::schema_for_output::<T>()
}

/// Replaces each `{"$ref": "#/$defs/Name"}` with the definition itself and drops `$defs`: the
/// same schema, shorter by the references (result types are not recursive; a reference nested
/// deeper than a few levels is left as it is).
fn inline_definitions(schema: &rmcp::model::JsonObject) -> rmcp::model::JsonObject {
    fn walk(
        value: &serde_json::Value,
        defs: &rmcp::model::JsonObject,
        depth: u8,
    ) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(name) = map
                    .get("$ref")
                    .and_then(|r| r.as_str())
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                    && let Some(def) = defs.get(name)
                    && depth < 8
                {
                    return walk(def, defs, depth + 1);
                }
                serde_json::Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), walk(v, defs, depth)))
                        .collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(|v| walk(v, defs, depth)).collect())
            }
            other => other.clone(),
        }
    }
    let Some(serde_json::Value::Object(defs)) = schema.get("$defs") else {
        return schema.clone();
    };
    let mut body = schema.clone();
    body.remove("$defs");
    match walk(&serde_json::Value::Object(body), defs, 0) {
        serde_json::Value::Object(map)
            if !serde_json::to_string(&map)
                .unwrap_or_default()
                .contains("#/$defs/") =>
        {
            map
        }
        _ => schema.clone(),
    }
}

/// Drops schema keywords that cost context on every turn and tell a model nothing it needs
/// (`$schema`, integer `format`s, `minimum: 0` on counts, `default: null` and `false`,
/// `additionalProperties`); arguments are still validated in full (unknown ones refused) when
/// they are deserialized.
fn compact_schema(schema: &rmcp::model::JsonObject) -> rmcp::model::JsonObject {
    fn noise(key: &str, value: &serde_json::Value) -> bool {
        match key {
            "$schema" | "format" | "additionalProperties" => true,
            "minimum" => value.as_u64() == Some(0),
            // A port's (u16) bound: what does not fit is refused when deserialized anyway.
            "maximum" => value.as_u64() == Some(u64::from(u16::MAX)),
            // Left out, an optional argument takes its default; a false flag is the usual one.
            "default" => value.is_null() || value == &serde_json::Value::Bool(false),
            _ => false,
        }
    }
    fn walk(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .filter(|(k, v)| !noise(k, v))
                    .map(|(k, v)| (k.clone(), walk(v)))
                    .collect(),
            ),
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(walk).collect())
            }
            other => other.clone(),
        }
    }
    match walk(&serde_json::Value::Object(schema.clone())) {
        serde_json::Value::Object(map) => map,
        _ => schema.clone(),
    }
}

fn strip_keys(schema: &mut rmcp::model::JsonObject, keys: &[&str]) {
    fn walk(value: &mut serde_json::Value, keys: &[&str]) {
        match value {
            serde_json::Value::Object(map) => {
                for key in keys {
                    // A property may itself be named like a keyword; only drop keyword values.
                    if map.get(*key).is_some_and(|v| v.is_string() || v.is_array()) {
                        map.remove(*key);
                    }
                }
                map.values_mut().for_each(|v| walk(v, keys));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, keys)),
            _ => {}
        }
    }
    for key in keys {
        if schema
            .get(*key)
            .is_some_and(|v| v.is_string() || v.is_array())
        {
            schema.remove(*key);
        }
    }
    schema.values_mut().for_each(|v| walk(v, keys));
}

/// `["integer", "null"]` → `"integer"` for optional arguments: leaving one out is how to say
/// "default" (an explicit null is still accepted).
fn drop_null_unions(schema: &mut rmcp::model::JsonObject) {
    fn walk(value: &mut serde_json::Value, key: &str) {
        let serde_json::Value::Object(map) = value else {
            return;
        };
        if key != "exit_code"
            && let Some(serde_json::Value::Array(types)) = map.get("type")
            && types.len() == 2
            && types.iter().any(|t| t == "null")
            && let Some(kept) = types.iter().find(|t| *t != "null").cloned()
        {
            map.insert("type".into(), kept);
        }
        for (k, v) in map.iter_mut() {
            walk(v, k);
        }
    }
    for (k, v) in schema.iter_mut() {
        walk(v, k);
    }
}
