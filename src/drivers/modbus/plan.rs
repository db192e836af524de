//! Read planning: the tags of one device merged into as few requests as possible.
//!
//! Tags of the same register kind are sorted by address and merged while the next tag starts
//! at most [`MAX_GAP_REGISTERS`] registers (or [`MAX_GAP_BITS`] bits) after the end of the
//! block and the block stays within the protocol's limits (125 registers, 2000 bits per
//! request). So 100 adjacent registers cost one request, and a tag list with small holes
//! still costs one; a big hole starts a new request rather than reading registers nobody
//! asked for.
//!
//! Gaps are read but unused; a device that refuses a merged block (an exception, typically
//! 2 "illegal data address" because a gap or a tag's address does not exist) is handled by
//! the driver: it splits the block into one request per tag, and keeps it split once that
//! proved to help (see `mod.rs`).

use super::codec::{is_bits, TagSpec};
use crate::config::Register;

/// The most registers one read may ask for (FC 3/4).
pub const MAX_REGISTERS: u16 = 125;
/// The most bits one read may ask for (FC 1/2).
pub const MAX_BITS: u16 = 2000;
/// The largest hole of unused registers a merged read may span.
pub const MAX_GAP_REGISTERS: u16 = 10;
/// The largest hole of unused bits a merged read may span.
pub const MAX_GAP_BITS: u16 = 64;

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub register: Register,
    pub start: u16,
    pub count: u16,
    /// Indices into the device's tags.
    pub tags: Vec<usize>,
}

/// Plans the reads for `tags` (the device's tags, in config order).
pub fn plan(tags: &[TagSpec]) -> Vec<Block> {
    plan_with(tags, MAX_GAP_REGISTERS, MAX_GAP_BITS)
}

/// [`plan`] with the gaps given.
pub fn plan_with(tags: &[TagSpec], gap_registers: u16, gap_bits: u16) -> Vec<Block> {
    let kind_rank = |r: Register| match r {
        Register::Coil => 0,
        Register::Discrete => 1,
        Register::Holding => 2,
        Register::Input => 3,
    };
    let mut order: Vec<usize> = (0..tags.len()).collect();
    order.sort_by_key(|&i| (kind_rank(tags[i].register), tags[i].address, i));
    let mut blocks: Vec<Block> = Vec::new();
    for i in order {
        let t = &tags[i];
        let bits = is_bits(t.register);
        let (max, gap) = if bits {
            (MAX_BITS, gap_bits)
        } else {
            (MAX_REGISTERS, gap_registers)
        };
        let start = u32::from(t.address);
        let end = start + u32::from(t.width());
        if let Some(b) = blocks.last_mut() {
            let b_start = u32::from(b.start);
            let b_end = b_start + u32::from(b.count);
            if b.register == t.register
                && start <= b_end + u32::from(gap)
                && end.max(b_end) - b_start <= u32::from(max)
            {
                b.count = (end.max(b_end) - b_start) as u16;
                b.tags.push(i);
                continue;
            }
        }
        blocks.push(Block {
            register: t.register,
            start: t.address,
            count: t.width(),
            tags: vec![i],
        });
    }
    blocks
}

/// One block per tag of `block`: the fallback when the device refuses the merged read.
pub fn split(block: &Block, tags: &[TagSpec]) -> Vec<Block> {
    block
        .tags
        .iter()
        .map(|&i| Block {
            register: block.register,
            start: tags[i].address,
            count: tags[i].width(),
            tags: vec![i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DataType, Order};

    fn t(register: Register, address: u16, ty: DataType) -> TagSpec {
        TagSpec {
            register,
            address,
            ty,
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: None,
            offset: None,
            bit: None,
        }
    }

    type Shape = Vec<(Register, u16, u16, Vec<usize>)>;

    fn shape(blocks: &[Block]) -> Shape {
        blocks
            .iter()
            .map(|b| (b.register, b.start, b.count, b.tags.clone()))
            .collect()
    }

    use DataType::*;
    use Register::*;

    #[test]
    fn hundred_adjacent_registers_are_one_request() {
        let tags: Vec<TagSpec> = (0..100).map(|a| t(Holding, a, U16)).collect();
        let p = plan(&tags);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start, p[0].count, p[0].tags.len()), (0, 100, 100));
    }

    #[test]
    fn merging_and_splitting_table() {
        let cases: Vec<(&str, Vec<TagSpec>, Shape)> = vec![
            (
                "types of different widths, out of order, small gap",
                vec![t(Holding, 10, F32), t(Holding, 0, U16), t(Holding, 4, U64)],
                vec![(Holding, 0, 12, vec![1, 2, 0])],
            ),
            (
                "a gap larger than the limit starts a new request",
                vec![t(Holding, 0, U16), t(Holding, 12, U16)],
                vec![(Holding, 0, 1, vec![0]), (Holding, 12, 1, vec![1])],
            ),
            (
                "a gap exactly at the limit is merged",
                vec![t(Holding, 0, U16), t(Holding, 11, U16)],
                vec![(Holding, 0, 12, vec![0, 1])],
            ),
            (
                "register kinds never mix",
                vec![
                    t(Input, 0, U16),
                    t(Holding, 1, U16),
                    t(Coil, 0, Bool),
                    t(Discrete, 0, Bool),
                ],
                vec![
                    (Coil, 0, 1, vec![2]),
                    (Discrete, 0, 1, vec![3]),
                    (Holding, 1, 1, vec![1]),
                    (Input, 0, 1, vec![0]),
                ],
            ),
            (
                "overlapping tags share registers",
                vec![t(Holding, 0, U32), t(Holding, 1, U16)],
                vec![(Holding, 0, 2, vec![0, 1])],
            ),
            (
                "coils: up to 2000 bits, gaps up to 64",
                vec![
                    t(Coil, 0, Bool),
                    t(Coil, 60, Bool),
                    t(Coil, 1999, Bool),
                    t(Coil, 2000, Bool),
                ],
                vec![(Coil, 0, 61, vec![0, 1]), (Coil, 1999, 2, vec![2, 3])],
            ),
            (
                "a string of 250 bytes is one full request",
                vec![t(Input, 0, String(250)), t(Input, 125, U16)],
                vec![(Input, 0, 125, vec![0]), (Input, 125, 1, vec![1])],
            ),
            (
                "the top of the address space",
                vec![t(Holding, 65534, U16), t(Holding, 65535, U16)],
                vec![(Holding, 65534, 2, vec![0, 1])],
            ),
        ];
        for (what, tags, want) in cases {
            assert_eq!(shape(&plan(&tags)), want, "{what}");
        }
        // Registers every 10 addresses: merged across the gaps up to 125 registers; a value
        // that would end past the 125th register starts the next request.
        let mut tags: Vec<TagSpec> = (0..=12).map(|k| t(Holding, 10 * k, U16)).collect();
        tags.push(t(Holding, 124, U32));
        tags.push(t(Holding, 130, U16));
        assert_eq!(
            shape(&plan(&tags)),
            vec![
                (Holding, 0, 121, (0..=12).collect()),
                (Holding, 124, 7, vec![13, 14])
            ]
        );
        // 2000 coils in one request, the 2001st in the next.
        let coils: Vec<TagSpec> = (0..2001).map(|a| t(Coil, a, Bool)).collect();
        let p = plan(&coils);
        assert_eq!((p.len(), p[0].count, p[1].start), (2, 2000, 2000));
    }

    #[test]
    fn split_gives_one_request_per_tag() {
        let tags = vec![t(Holding, 0, U16), t(Holding, 2, F32), t(Holding, 8, U64)];
        let p = plan(&tags);
        assert_eq!(p.len(), 1);
        assert_eq!(
            shape(&split(&p[0], &tags)),
            vec![
                (Holding, 0, 1, vec![0]),
                (Holding, 2, 2, vec![1]),
                (Holding, 8, 4, vec![2])
            ]
        );
    }
}
