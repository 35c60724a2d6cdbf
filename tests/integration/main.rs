mod sim;
mod sim_conformance;
mod sim_faults;
mod sim_support;
