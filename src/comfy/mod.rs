//! comfy
