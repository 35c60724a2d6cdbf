//! Reporters: the live progress display, the JSON run report and the HTML contact sheet.
//! They consume engine events and results; none of them talks to a server.

pub mod book;
pub mod changes;
pub mod ci;
pub mod html;
pub mod json;
pub mod merge;
pub mod progress;

pub use json::{
    ChangeKind, JobChange, JobReport, PreviousImage, ReportStatus, ReportWriter, RunReport, Totals,
};
