//! `broadcast-router plugin inspect FILE`: what a component is, as the
//! router sees it — its world and the version of the contract it was
//! built for (and whether this router loads that version), the hooks it
//! declares, what it imports and exports, its initial memory, and whether
//! this router can load it (and if not, why).

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wasmtime::component::Component;
use wasmtime::{Engine, component::types::ComponentItem};

use super::Plugins;
use super::bindings::Contract;
use super::tryout::TryoutError;
use crate::config::Config;

/// Inspects the component at `path`, loading it as a plugin with a
/// `memory` cap and `hook_timeout` (its `init` runs with `{}`). Fails only
/// when the file is not a component at all.
pub fn inspect(path: &Path, memory: &str, hook_timeout: Duration) -> Result<Value, TryoutError> {
    let text = format!(
        "[plugins.plugin]\npath = {}\nmemory = {}\nhook_timeout = \"{}ms\"\n\n\
         [[routes]]\nname = \"inspect\"\npath = \"/inspect\"\ntargets = [\"127.0.0.1:1\"]\n\
         plugins = [{{ use = \"plugin\" }}]\n",
        toml::Value::String(path.display().to_string()),
        toml::Value::String(memory.to_owned()),
        hook_timeout.as_millis().max(1),
    );
    let config =
        Config::parse(&text).map_err(|problems| TryoutError::Input(problems.to_string()))?;
    let loaded = Plugins::load(&config);
    let (component, engine, hooks, world, loadable) = match &loaded {
        Ok(plugins) => {
            let chain = plugins.chain("inspect");
            let plugin = &chain.links[0].plugin;
            (
                plugin.component.clone(),
                plugin.engine.clone(),
                json!(chain.hooks_of_first()),
                json!(plugin.world()),
                json!({ "ok": true }),
            )
        }
        Err(problems) => {
            let reason: Vec<String> = problems.0.iter().map(|p| p.message.clone()).collect();
            // Compiled on its own, so that imports and memory still show.
            let mut engine_config = wasmtime::Config::new();
            engine_config.wasm_component_model(true);
            let engine = Engine::new(&engine_config)
                .map_err(|error| TryoutError::Load(format!("{error:#}")))?;
            let component = Component::from_file(&engine, path)
                .map_err(|error| TryoutError::Load(format!("{}: {error:#}", path.display())))?;
            (
                component,
                engine,
                Value::Null,
                Value::Null,
                json!({ "ok": false, "why": reason.join("; ") }),
            )
        }
    };
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let exports: Vec<String> = ty
        .exports(&engine)
        .map(|(name, item)| match item.ty {
            ComponentItem::ComponentFunc(_) => format!("func {name}"),
            _ => name.to_owned(),
        })
        .collect();
    // The world's package and version, from its imports of the contract's
    // interfaces (`types`, `log`).
    let version = match Contract::imported_versions(&component, &engine).as_slice() {
        [version] => Some(version.clone()),
        _ => None,
    };
    let package = version
        .as_ref()
        .map(|version| format!("broadcast:plugin@{version}"));
    let contract = json!({
        "version": version,
        "loads": version.as_deref().and_then(Contract::parse).is_some(),
        "router": Contract::ALL.map(Contract::version),
        "current": Contract::CURRENT.version(),
    });
    let initial_memory = component
        .resources_required()
        .and_then(|resources| resources.max_initial_memory_size)
        .map(|pages| pages * 65536);
    Ok(json!({
        "file": path.display().to_string(),
        "world": world,
        "package": package,
        "contract": contract,
        "hooks": hooks,
        "imports": imports,
        "exports": exports,
        "initial_memory_bytes": initial_memory,
        "initial_memory": initial_memory.map(|bytes| bytesize::ByteSize::b(bytes).to_string()),
        "loadable": loadable,
    }))
}
