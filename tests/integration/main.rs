//! The one integration-test binary (see STYLE.md): each module is one area.

mod auth;
mod cli;
mod faults;
mod faults_process;
mod manifest;
mod real_comfy;
mod report_schema;
mod run;
mod serve;
mod sim;
mod sim_conformance;
mod sim_faults;
mod sim_support;
mod support;
