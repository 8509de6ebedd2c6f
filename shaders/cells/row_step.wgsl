// The forward entry point of a whole-row cell (one without Cell::UNIT_STEP), after the cell's
// file, which defines `row_forward(row, l)`: invocation l's share of one stage for a row, a
// workgroup per row; it reads and writes the states in place. In stage 0 of a training or
// zoneout step (p.save) the row's states before the step go first to the tape's states before
// each row (the backward and zoneout read them there), every invocation's share copied before
// any invocation writes a state: one dispatch a step fewer than a separate copy. (p is
// uniform, so the barrier is in uniform control flow.)
@compute @workgroup_size(64)
fn cell_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    if (p.save != 0u) {
        save_row(wid.x, lid.x);
        storageBarrier();
    }
    row_forward(wid.x, lid.x);
}
