//! Preparing a generation: flow files loaded and validated, scripts compiled once, the
//! CQRS lint run on what the compiled handlers do (`flow::lint`), and every file the set
//! depends on listed for the watcher. Nothing starts here; `Runtime::apply`
//! runs what this returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::flow::diagnostic::{FlowReport, FlowWarning};
use crate::flow::model::{FlowSet, ScriptSource};
use crate::script::{compile_set_reusing, CompiledScripts};

/// A loaded, validated and compiled flow set, ready to run.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub flows: Arc<FlowSet>,
    pub scripts: CompiledScripts,
    pub warnings: Vec<FlowWarning>,
    /// Every file the set depends on: flow files, scripts and imported modules.
    pub files: Vec<PathBuf>,
    /// The text of every imported module, so that a change under an `import` is a change.
    pub module_texts: BTreeMap<PathBuf, Arc<str>>,
}

impl Prepared {
    /// What each subscriber's script does (`flow::lint::Facts`), by subscriber name.
    pub fn facts(&self) -> crate::flow::lint::Facts {
        script_facts(&self.flows, &self.scripts)
    }
}

/// The facts of each subscriber's compiled script, by subscriber name.
fn script_facts(flows: &FlowSet, scripts: &CompiledScripts) -> crate::flow::lint::Facts {
    flows
        .subscribers
        .iter()
        .filter(|(_, s)| s.script.is_some())
        .map(|(name, _)| {
            let key = format!("subscribers.{name}");
            let facts = scripts.by_component.get(&key).and_then(|s| s.facts.clone());
            (name.clone(), facts)
        })
        .collect()
}

/// Loads flow files and folders, compiles their scripts and lints the two together.
///
/// # Errors
/// Every problem at once, as one report.
pub fn prepare(paths: &[PathBuf]) -> Result<Prepared, FlowReport> {
    prepare_after(paths, None)
}

/// As `prepare`, reusing the compiled scripts of `previous` whose source and imported
/// modules did not change (what a reload does).
///
/// # Errors
/// Every problem at once, as one report.
pub fn prepare_after(
    paths: &[PathBuf],
    previous: Option<&Prepared>,
) -> Result<Prepared, FlowReport> {
    let loaded = crate::flow::load(paths)?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let reuse = |key: &str, source: &ScriptSource| {
        let previous = previous?;
        let script = previous.scripts.by_component.get(key)?;
        let same_source = script.path == source.path && script.text == source.text;
        let same_modules = script.imports.iter().all(|module| {
            let now = std::fs::read_to_string(module).ok();
            now.as_deref() == previous.module_texts.get(module).map(|t| &**t)
        });
        (same_source && same_modules).then(|| script.clone())
    };
    let scripts = compile_set_reusing(&loaded.flows, reuse)
        .map_err(|errors| FlowReport::new(&names, errors))?;
    // The CQRS lint, on what the compiled handlers do.
    let facts = script_facts(&loaded.flows, &scripts);
    let mut warnings = loaded.warnings.clone();
    warnings.extend(
        crate::flow::lint::lint(&loaded, &facts)
            .map_err(|errors| FlowReport::new(&names, errors))?,
    );
    let mut files = loaded.files_read;
    let mut module_texts = BTreeMap::new();
    for module in scripts.imports() {
        if let Ok(text) = std::fs::read_to_string(&module) {
            module_texts.insert(module.clone(), Arc::from(text));
        }
        files.push(module);
    }
    files.sort();
    files.dedup();
    Ok(Prepared {
        flows: Arc::new(loaded.flows),
        scripts,
        warnings,
        files,
        module_texts,
    })
}
