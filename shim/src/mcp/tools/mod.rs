//! The MCP tools, one `#[tool_router]` block per area, combined into the one router the shim
//! serves (its schemas are compacted by `Shim::new`).

mod exec;
mod files;
mod fleet;
mod forward;
mod hosts;
mod jobs;

use rmcp::handler::server::router::tool::ToolRouter;

pub(crate) use exec::ExecuteParams;
pub(crate) use jobs::{OutputError, is_refusal};

use super::Shim;

pub(super) fn router() -> ToolRouter<Shim> {
    Shim::hosts_router()
        + Shim::exec_router()
        + Shim::fleet_router()
        + Shim::files_router()
        + Shim::jobs_router()
        + Shim::forward_router()
}

#[cfg(test)]
mod tests {
    use super::super::Shim;

    /// Clients send tools/list with every turn: what a model reads of it (names, descriptions,
    /// input schemas) stays within 6 KB, the whole list within 12 KB.
    #[test]
    fn tool_list_should_stay_within_the_budget() {
        let shim = Shim::new(None, None);
        let hosts: Vec<String> = (1..=8).map(|i| format!("host-{i}")).collect();
        let tools = shim.tools(Some(&hosts));
        let whole = serde_json::to_string(&serde_json::json!({ "tools": tools }))
            .unwrap()
            .len();
        let read: usize = tools
            .iter()
            .map(|t| {
                serde_json::to_string(&serde_json::json!({
                    "name": t.name,
                    "description": t.description,
                    "inputSchema": t.input_schema,
                }))
                .unwrap()
                .len()
            })
            .sum();
        if std::env::var_os("DUMP_TOOLS").is_some() {
            println!("{}", serde_json::to_string_pretty(&tools).unwrap());
        }
        println!(
            "tools/list with {} tools: {read} bytes read by the model, {whole} bytes in all",
            tools.len()
        );
        for t in &tools {
            println!(
                "  {}: description + input {} bytes, output schema {} bytes",
                t.name,
                serde_json::to_string(&t.input_schema).unwrap().len()
                    + t.description.as_deref().unwrap_or_default().len(),
                serde_json::to_string(&t.output_schema).unwrap().len()
            );
        }
        assert!(
            read <= 6 * 1024,
            "the model reads {read} bytes of tools/list"
        );
        assert!(whole <= 12 * 1024, "tools/list is {whole} bytes");
    }

    /// Output schemas type every scalar (no `{}` property: clients validate against them).
    #[test]
    fn output_schemas_should_type_every_property() {
        fn check(tool: &str, path: &str, value: &serde_json::Value) {
            let Some(map) = value.as_object() else { return };
            if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let p = prop.as_object().unwrap();
                    assert!(
                        p.contains_key("type")
                            || p.contains_key("$ref")
                            || p.contains_key("anyOf")
                            || p.contains_key("oneOf"),
                        "{tool}: {path}.{name} is untyped: {prop}"
                    );
                }
            }
            for (key, v) in map {
                check(tool, &format!("{path}.{key}"), v);
            }
        }
        let shim = Shim::new(None, None);
        for t in shim.tools(None) {
            let out = t
                .output_schema
                .as_ref()
                .expect("every tool has an output schema");
            check(&t.name, "", &serde_json::Value::Object((**out).clone()));
        }
    }

    #[test]
    fn every_tool_should_be_listed() {
        let shim = Shim::new(None, None);
        let names: Vec<String> = shim
            .tools(None)
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "list_hosts",
                "ssh_disconnect",
                "ssh_download",
                "ssh_execute",
                "ssh_execute_batch",
                "ssh_execute_many",
                "ssh_forward",
                "ssh_job_kill",
                "ssh_job_output",
                "ssh_job_start",
                "ssh_jobs",
                "ssh_status",
                "ssh_upload"
            ]
        );
    }
}
