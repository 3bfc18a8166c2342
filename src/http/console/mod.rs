//! The browser console's server side. Here only the editor's routes (`files`).

pub(crate) mod files;
