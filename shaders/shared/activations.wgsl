// Shared activations, written so that no input overflows: exp() is only ever taken of a
// non-positive argument. Joined in front of every kernel family that needs them.

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

fn tanh_safe(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    let t = (1.0 - e) / (1.0 + e);
    return select(-t, t, x >= 0.0);
}

// An offset that says "absent" (no bias, no h0 ...).
const NONE: u32 = 0xffffffffu;

// A NaN that is not a constant expression (WGSL refuses those): what the single-dispatch loops
// write where an adapter cut them short (shaders/cells/stage.wgsl, loop_grad.wgsl).
fn poison(j: u32) -> f32 {
    return bitcast<f32>(0x7fc00000u | (j & 0u));
}
