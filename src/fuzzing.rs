//! Entry points for the property tests (`tests/parsers_prop.rs`) and the fuzz targets (`fuzz/`):
//! thin wrappers that make crate-internal parsers of outside data callable from outside the crate.
//! Not part of the operator's API; hidden from the docs and free to change.

use crate::defender::DefenderError;

/// A Defender answer with a non-2xx status (`{"error":{code,message,target}}`, plain text, HTML
/// or nothing) as the client reports it: `defender::error::api_error`.
pub fn defender_api_error(status: u16, body: &[u8]) -> DefenderError {
    crate::defender::error::api_error(status, body)
}

/// The first line of `text`, at most `max` characters (plus `…` when cut): `defender::error::clip`,
/// which every echoed message from Entra or Defender goes through.
pub fn clip(text: &str, max: usize) -> String {
    crate::defender::error::clip(text, max)
}
