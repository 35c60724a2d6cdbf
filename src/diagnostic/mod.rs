//! User-facing diagnostics, shared by every layer: spanned [`Problem`]s in a [`SourceFile`]
//! (`file:line:col`, underline, help), the boxed [`Diagnostic`] commands return, did-you-mean
//! suggestions, and the bounded renderer ([`excerpt::Bounded`]) every diagnostic is shown
//! through. Decides nothing about what is wrong and reads no files.

pub mod excerpt;
mod problem;
mod suggest;

pub use excerpt::Bounded;
pub use problem::{Problem, SourceFile};
pub use suggest::did_you_mean;

/// Any user-facing diagnostic: what failed, where, and what to try.
pub type Diagnostic = Box<dyn miette::Diagnostic + Send + Sync + 'static>;
