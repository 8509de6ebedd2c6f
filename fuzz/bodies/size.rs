//! The size the structured bodies (config, packing) draw: mostly small (`Small`, below `SMALL`),
//! sometimes anything (`Any`: the overflow and allocation paths).

use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Size<const SMALL: usize> {
    Small(u8),
    Any(usize),
}

impl<const SMALL: usize> Size<SMALL> {
    pub fn get(self) -> usize {
        match self {
            Size::Small(v) => v as usize % SMALL,
            Size::Any(v) => v,
        }
    }
}
