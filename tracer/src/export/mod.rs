//! Trace files into other tools' formats: JSON lines (`jsonl`) and Perfetto (`perfetto`).

pub mod jsonl;
pub mod perfetto;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Read(#[from] crate::tracefile::ReadError),
    #[error("encoding JSON: {0}")]
    Json(serde_json::Error),
    #[error("writing the output: {0}")]
    Write(std::io::Error),
}
