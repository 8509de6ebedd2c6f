// The regularisers' masks (src/masks.rs is the CPU twin): element i of the stream `seed` at
// step `counter` is hit (dropped; for zoneout, keeps its previous value) when
// hash32(hash32(i ^ seed) + counter * 0x9e3779b9) < threshold (the probability times 2^32).

// A 32-bit integer hash (lowbias32).
fn hash32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn mask_hit(i: u32, seed: u32, counter: u32, threshold: u32) -> bool {
    return hash32(hash32(i ^ seed) + counter * 0x9e3779b9u) < threshold;
}
