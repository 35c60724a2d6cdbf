//! What a node's execution gets and gives: its inputs (links resolved to values, literals as
//! validation coerced them), the simulator and the prompt it runs in, and its outputs or why
//! it did not finish. The worker builds an [`Exec`] and calls the class's [`Execute`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use serde_json::{Map, Value};

use super::super::image::Image;
use super::super::messages::Messages;
use super::super::pyjson;
use super::super::state::{QueueItem, Shared};
use super::value::Val;

/// A node's outputs (one value per output slot) and its `ui` output, if any.
pub type Outputs = (Vec<Val>, Option<Value>);

/// What a node's execution comes to.
pub type NodeResult = Result<Outputs, NodeFail>;

/// A class's `FUNCTION`.
#[derive(Clone, Copy, Debug)]
pub enum Execute {
    /// Runs to its end at once.
    Now(fn(&mut Exec<'_, '_>) -> NodeResult),
    /// Takes (simulated GPU) time: awaited, and may be interrupted.
    Wait(for<'e, 'r, 'a> fn(&'e mut Exec<'r, 'a>) -> Waiting<'e>),
}

/// A [`Execute::Wait`] node running.
pub type Waiting<'e> = Pin<Box<dyn Future<Output = NodeResult> + Send + 'e>>;

/// Why a node did not finish.
pub enum NodeFail {
    Interrupted,
    Exception {
        type_name: String,
        message: String,
        traceback: Vec<String>,
    },
    /// The simulator crashed under this prompt: stop without a word.
    Crashed,
}

/// The frames of `execution.py` every exception raised in a node's function passes
/// through, as ComfyUI 0.8.0 reports them (transcript 03); a node adds its own below.
pub const EXECUTION_FRAMES: [&str; 4] = [
    "  File \"ComfyUI/execution.py\", line 518, in execute\n    output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, input_data_all, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n                                                              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/execution.py\", line 329, in get_output_data\n    return_values = await _async_map_node_over_list(prompt_id, unique_id, obj, input_data_all, obj.FUNCTION, allow_interrupt=True, execution_block_cb=execution_block_cb, pre_execute_cb=pre_execute_cb, v3_data=v3_data)\n                    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n",
    "  File \"ComfyUI/execution.py\", line 303, in _async_map_node_over_list\n    await process_inputs(input_dict, i)\n",
    "  File \"ComfyUI/execution.py\", line 291, in process_inputs\n    result = f(**inputs)\n             ^^^^^^^^^^^\n",
];

/// An exception raised in a node's function, with `execution.py`'s frames.
pub fn exception(type_name: &str, message: impl Into<String>) -> NodeFail {
    NodeFail::Exception {
        type_name: type_name.into(),
        message: message.into(),
        traceback: EXECUTION_FRAMES.map(String::from).to_vec(),
    }
}

/// Python's `round()` of a float to an int: halves go to the even neighbour.
pub fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// PyTorch's `interpolate` refusing an empty side (`from` and `to` as width, height).
pub fn empty_interpolation(from: (i64, i64), to: (i64, i64)) -> NodeFail {
    exception(
        "RuntimeError",
        format!(
            "Input and output sizes should be greater than 0, but got input (H: {}, W: {}) output (H: {}, W: {})",
            from.1, from.0, to.1, to.0
        ),
    )
}

/// One node's execution: where it runs and what its inputs are.
pub struct Exec<'r, 'a> {
    pub shared: &'a Shared,
    pub item: &'a QueueItem,
    /// The node's id in the prompt.
    pub node: &'r str,
    pub messages: &'r mut Messages<'a>,
    /// The node's inputs as validation left them (links included).
    literals: &'a Map<String, Value>,
    /// Its linked inputs, resolved.
    links: HashMap<&'a str, Val>,
}

impl<'r, 'a> Exec<'r, 'a> {
    pub fn new(
        shared: &'a Shared,
        item: &'a QueueItem,
        node: &'r str,
        messages: &'r mut Messages<'a>,
        literals: &'a Map<String, Value>,
        links: HashMap<&'a str, Val>,
    ) -> Self {
        Exec {
            shared,
            item,
            node,
            messages,
            literals,
            links,
        }
    }

    /// A linked input's value.
    pub fn link(&self, name: &str) -> Option<&Val> {
        self.links.get(name)
    }

    /// A linked `IMAGE` input; Python's error on `None` when there is none.
    pub fn image(&self, name: &str) -> Result<Image, NodeFail> {
        match self.links.get(name) {
            Some(Val::Image(i)) => Ok(i.clone()),
            _ => Err(exception(
                "AttributeError",
                format!("'NoneType' object has no attribute 'shape' ({name})"),
            )),
        }
    }

    /// An `INT` literal (0 when absent).
    pub fn int(&self, name: &str) -> i64 {
        self.literals
            .get(name)
            .and_then(|v| v.as_i64().or_else(|| v.as_u64().map(|u| u as i64)))
            .unwrap_or(0)
    }

    /// An `INT` literal read as unsigned (seeds reach `u64::MAX`).
    pub fn uint(&self, name: &str) -> u64 {
        self.literals
            .get(name)
            .and_then(|v| v.as_u64().or_else(|| v.as_i64().map(|i| i as u64)))
            .unwrap_or(0)
    }

    /// A `FLOAT` literal (0.0 when absent).
    pub fn float(&self, name: &str) -> f64 {
        self.literals
            .get(name)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0)
    }

    /// A literal as Python's `str()` gives it (empty when absent).
    pub fn string(&self, name: &str) -> String {
        self.literals
            .get(name)
            .map(pyjson::str_value)
            .unwrap_or_default()
    }
}

/// `work`, unless the interrupt flag is or becomes set first (then `Interrupted`). A
/// targeted interrupt of another prompt wakes the wait but leaves the flag clear.
pub async fn unless_interrupted(
    shared: &Shared,
    work: impl Future<Output = ()>,
) -> Result<(), NodeFail> {
    let mut work = std::pin::pin!(work);
    loop {
        let wake = shared.interrupt_wake.notified();
        let mut wake = std::pin::pin!(wake);
        // Registered before the flag is read, so a `notify_waiters` in between is not lost.
        wake.as_mut().enable();
        if shared.interrupt.load(Ordering::SeqCst) {
            return Err(NodeFail::Interrupted);
        }
        tokio::select! {
            () = &mut work => return Ok(()),
            () = wake => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::py_round;

    #[test]
    fn rounds_halves_to_even_as_python_does() {
        // round(0.5), round(1.5), round(2.5), round(-2.5) in Python: 0, 2, 2, -2.
        assert_eq!(
            [0.5, 1.5, 2.5, -2.5, 12.0 * 1.25, 2.4999].map(py_round),
            [0, 2, 2, -2, 15, 2]
        );
    }
}
