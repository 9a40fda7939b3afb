//! Plain words for a tool call that does not fit the tool. rmcp reports arguments that do not
//! deserialize in serde's terms (`failed to deserialize parameters: missing field `command``,
//! from its `Parameters` extractor) and an unknown tool as "tool not found"; the shim says which
//! argument is missing or wrong and what the tool takes, read from the tool's input schema.

use rmcp::model::{CallToolResponse, ContentBlock, JsonObject, Tool};
use serde_json::Value;

/// How rmcp's `Parameters` extractor starts its message for arguments that do not deserialize.
const SERDE_PREFIX: &str = "failed to deserialize parameters:";

/// `unknown tool "x"; the tools are: a, b, c`.
pub(super) fn unknown_tool_text(name: &str, tools: &[Tool]) -> String {
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    format!("unknown tool {name:?}; the tools are: {}", names.join(", "))
}

/// Rewrites rmcp's argument failure of `tool` (called with `given`) into plain words; any other
/// response passes unchanged.
pub(super) fn explain(
    tool: &Tool,
    given: Option<&JsonObject>,
    mut response: CallToolResponse,
) -> CallToolResponse {
    let CallToolResponse::Complete(result) = &mut response else {
        return response;
    };
    if result.is_error != Some(true) {
        return response;
    }
    let serde_message = match result.content.as_slice() {
        [only] => only
            .as_text()
            .and_then(|t| t.text.strip_prefix(SERDE_PREFIX))
            .map(|m| m.trim().to_string()),
        _ => None,
    };
    if let Some(serde_message) = serde_message {
        let empty = JsonObject::new();
        let text = problem_text(tool, given.unwrap_or(&empty), &serde_message);
        result.content = vec![ContentBlock::text(text)];
    }
    response
}

/// `invalid arguments for ssh_execute: `command` is missing. ssh_execute takes …`.
fn problem_text(tool: &Tool, given: &JsonObject, serde_message: &str) -> String {
    let schema = tool.input_schema.as_ref();
    let empty = serde_json::Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required = required(schema);
    let mut problems = Vec::new();
    for name in given.keys() {
        if !properties.contains_key(name) {
            problems.push(format!("`{name}` is not an argument of {}", tool.name));
        }
    }
    for name in &required {
        if given.get(*name).is_none_or(Value::is_null) {
            problems.push(format!("`{name}` is missing"));
        }
    }
    for (name, value) in given {
        if let Some(why) = properties.get(name).and_then(|p| mismatch(p, value)) {
            problems.push(format!("`{name}` {why}"));
        }
    }
    if problems.is_empty() {
        problems.push(plain_serde(serde_message, given));
    }
    format!(
        "invalid arguments for {name}: {}. {name} takes {}.",
        problems.join("; "),
        signature(properties, &required),
        name = tool.name
    )
}

fn required(schema: &JsonObject) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Why `value` does not fit the property's schema, if it visibly does not.
fn mismatch(property: &Value, value: &Value) -> Option<String> {
    // An explicit null is how JSON says "not given": optional arguments take it, and a missing
    // required one is reported as missing.
    if value.is_null() {
        return None;
    }
    let fits = |kind: &str, value: &Value| match kind {
        "string" => value.is_string(),
        "integer" => value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => true,
    };
    let kind = property.get("type").and_then(Value::as_str)?;
    let items = property
        .get("items")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str);
    let wrong = !fits(kind, value)
        || (kind == "array"
            && items.is_some_and(|item| {
                value
                    .as_array()
                    .is_some_and(|values| values.iter().any(|v| !fits(item, v)))
            }));
    wrong.then(|| format!("must be {} (got {})", type_words(property), shown(value)))
}

/// A property's type as words: "a string", "a whole number ≥ 0", "an array of strings".
fn type_words(property: &Value) -> String {
    let kind = property
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("any");
    match kind {
        "string" => "a string".into(),
        "integer" => match property.get("minimum").and_then(Value::as_u64) {
            Some(min) => format!("a whole number ≥ {min}"),
            None => "a whole number ≥ 0".into(),
        },
        "number" => "a number".into(),
        "boolean" => "true or false".into(),
        "object" => "an object".into(),
        "array" => match property
            .get("items")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
        {
            Some("string") => "an array of strings".into(),
            Some(item) => format!("an array of {item}s"),
            None => "an array".into(),
        },
        other => format!("a {other}"),
    }
}

/// A value as the caller wrote it, shortened.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 40 {
        return text;
    }
    let mut cut: String = text.chars().take(39).collect();
    cut.push('…');
    cut
}

/// serde's message when the schema alone does not show the problem (a number too large for its
/// type): named by the argument that holds the number when one does.
fn plain_serde(message: &str, given: &JsonObject) -> String {
    // "invalid value: integer `5000000000`, expected u32"
    let number = message
        .strip_prefix("invalid value: integer `")
        .and_then(|rest| rest.split('`').next());
    if let Some(number) = number
        && let Ok(value) = number.parse::<u64>()
        && let Some((name, _)) = given.iter().find(|(_, v)| v.as_u64() == Some(value))
    {
        let most = if message.ends_with("expected u32") {
            format!("; at most {}", u32::MAX)
        } else {
            String::new()
        };
        return format!("`{name}` is too large (got {number}{most})");
    }
    message.to_string()
}

/// `host (string), command (string), and optionally timeout (whole number ≥ 0), …`.
fn signature(properties: &serde_json::Map<String, Value>, required: &[&str]) -> String {
    let describe = |name: &str| {
        let words = properties
            .get(name)
            .map(type_words)
            .unwrap_or_else(|| "any value".into());
        format!("{name} ({words})")
    };
    let must: Vec<String> = required.iter().map(|name| describe(name)).collect();
    let may: Vec<String> = properties
        .keys()
        .filter(|name| !required.contains(&name.as_str()))
        .map(|name| describe(name))
        .collect();
    match (must.is_empty(), may.is_empty()) {
        (true, true) => "no arguments".into(),
        (false, true) => must.join(", "),
        (true, false) => format!("optionally {}", may.join(", ")),
        (false, false) => format!("{}, and optionally {}", must.join(", "), may.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::Shim;
    use rmcp::model::CallToolResult;

    fn tool(name: &str) -> Tool {
        Shim::new(None, None)
            .tools(None)
            .into_iter()
            .find(|t| t.name == name)
            .unwrap()
    }

    /// What the shim answers for `args`, given rmcp's serde message.
    fn explained(tool_name: &str, args: Value, serde_message: &str) -> String {
        let Value::Object(args) = args else {
            panic!("arguments are an object")
        };
        let failure = CallToolResult::error(vec![ContentBlock::text(format!(
            "{SERDE_PREFIX} {serde_message}"
        ))]);
        let CallToolResponse::Complete(result) =
            explain(&tool(tool_name), Some(&args), failure.into())
        else {
            panic!("a result")
        };
        result.content[0].as_text().unwrap().text.clone()
    }

    #[test]
    fn a_missing_argument_is_named_with_what_the_tool_takes() {
        let text = explained(
            "ssh_execute",
            serde_json::json!({ "host": "box" }),
            "missing field `command`",
        );
        assert_eq!(
            text,
            "invalid arguments for ssh_execute: `command` is missing. ssh_execute takes host (a \
             string), command (a string), and optionally cwd (a string), max_output (a whole \
             number ≥ 1024), timeout (a whole number ≥ 0)."
        );
    }

    #[test]
    fn wrong_types_and_unknown_arguments_are_named() {
        let text = explained(
            "ssh_execute",
            serde_json::json!({ "host": "box", "command": "true", "timeout": "5", "sudo": true }),
            "unknown field `sudo`, expected one of `host`, `command`",
        );
        assert!(
            text.starts_with(
                "invalid arguments for ssh_execute: `sudo` is not an argument of ssh_execute; \
                 `timeout` must be a whole number ≥ 0 (got \"5\")."
            ),
            "{text}"
        );
        let text = explained(
            "ssh_execute_batch",
            serde_json::json!({ "host": "box", "commands": "ls" }),
            "invalid type: string \"ls\", expected a sequence",
        );
        assert!(
            text.contains("`commands` must be an array of strings (got \"ls\")"),
            "{text}"
        );
        let text = explained(
            "ssh_execute",
            serde_json::json!({ "host": "box", "command": "true", "timeout": 5_000_000_000u64 }),
            "invalid value: integer `5000000000`, expected u32",
        );
        assert!(
            text.contains("`timeout` is too large (got 5000000000; at most 4294967295)"),
            "{text}"
        );
    }

    #[test]
    fn no_serde_words_remain() {
        for (args, message) in [
            (serde_json::json!({}), "missing field `host`"),
            (
                serde_json::json!({ "host": 1, "command": "x" }),
                "invalid type: integer `1`, expected a string",
            ),
        ] {
            let text = explained("ssh_execute", args, message);
            for serde_word in ["deserialize", "field", "expected", "invalid type"] {
                assert!(!text.contains(serde_word), "{serde_word}: {text}");
            }
        }
    }

    #[test]
    fn other_results_pass_unchanged() {
        let own = CallToolResult::error(vec![ContentBlock::text("unknown host \"x\"")]);
        let CallToolResponse::Complete(result) = explain(&tool("ssh_status"), None, own.into())
        else {
            panic!("a result")
        };
        assert_eq!(
            result.content[0].as_text().unwrap().text,
            "unknown host \"x\""
        );
    }

    #[test]
    fn an_unknown_tool_names_itself_and_the_tools() {
        let tools = Shim::new(None, None).tools(None);
        let text = unknown_tool_text("ssh_exec", &tools);
        assert!(
            text.starts_with("unknown tool \"ssh_exec\"; the tools are: list_hosts, "),
            "{text}"
        );
        assert!(text.contains("ssh_execute, ssh_execute_batch"), "{text}");
    }
}
