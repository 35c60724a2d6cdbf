//! The one integration-test binary (see STYLE.md): each module is one area.

mod architecture;
mod auth;
mod changes;
mod ci_formats;
mod cli;
mod exit_codes;
mod faults;
mod faults_outage;
mod faults_process;
mod faults_sim_leftovers;
mod hostile;
mod manifest;
mod real_comfy;
mod report_schema;
mod routing;
mod run;
mod serve;
mod sim;
mod sim_conformance;
mod sim_faults;
mod sim_support;
mod support;
mod vocabulary;
