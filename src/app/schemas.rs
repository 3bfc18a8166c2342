//! `edaflow schema` (the JSON Schema of flow files, for editors) and `edaflow asyncapi`
//! (an AsyncAPI 3.0.0 document of a flow set). Both print JSON on stdout.

use std::path::PathBuf;

use super::flow_files::load;
use super::{render, Error};

/// `edaflow schema`.
pub(super) fn schema() -> Result<(), Error> {
    render::emit(&crate::flow::schema::flow_schema_text())
}

/// `edaflow asyncapi FLOW...`: loads (and checks) the flows like `validate`, then prints.
pub(super) fn asyncapi(flows: &[PathBuf]) -> Result<(), Error> {
    let prepared = load(flows)?;
    let document = crate::flow::asyncapi::document(&prepared.flows);
    let mut text = serde_json::to_string_pretty(&document).expect("a JSON value serializes");
    text.push('\n');
    render::emit(&text)
}
