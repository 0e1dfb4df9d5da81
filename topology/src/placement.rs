//! Placement: a proposal of which cell should own each slot, by consistent hashing.
//!
//! Each cell is put on the ring `VNODES` times (the `hashring` crate has no virtual nodes of
//! its own), so shares stay within about 15% of even and adding a cell moves about 1/N of the
//! slots. The result is a proposal: raft-meta stores it explicitly and never recomputes it on
//! read, so the ring's hash function need not be stable across versions.

use hashring::HashRing;

use crate::{CellId, Slot};

/// Points per cell on the ring.
pub const VNODES: u32 = 200;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VNode<'a> {
    cell: &'a CellId,
    point: u32,
}

/// The proposed owner of every slot, indexed by slot number. `None` when `cells` is empty.
pub fn place(cells: &[CellId]) -> Option<Vec<CellId>> {
    if cells.is_empty() {
        return None;
    }
    let mut ring = HashRing::new();
    for cell in cells {
        for point in 0..VNODES {
            ring.add(VNode { cell, point });
        }
    }
    Slot::all()
        .map(|slot| ring.get(&("slot", slot.get())).map(|v| v.cell.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(n: usize) -> Vec<CellId> {
        (1..=n)
            .map(|i| CellId::parse(&format!("c{i}")).unwrap())
            .collect()
    }

    #[test]
    fn shares_are_near_even() {
        for n in [2, 3, 4, 8] {
            let owners = place(&cells(n)).unwrap();
            assert_eq!(owners.len(), 1024);
            for c in cells(n) {
                let share = owners.iter().filter(|o| **o == c).count() as f64;
                let even = 1024.0 / n as f64;
                assert!(
                    share <= even * 1.2 && share >= even * 0.8,
                    "{c}: {share} of {even}"
                );
            }
        }
    }

    #[test]
    fn adding_a_cell_moves_about_one_nth() {
        let before = place(&cells(4)).unwrap();
        let after = place(&cells(5)).unwrap();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // Ideal is 1024/5 ≈ 205; every moved slot must go to the new cell.
        assert!(moved < 300, "moved {moved}");
        assert!(before
            .iter()
            .zip(&after)
            .all(|(a, b)| a == b || b.as_str() == "c5"));
    }

    #[test]
    fn no_cells_no_placement() {
        assert!(place(&[]).is_none());
    }
}
