//! Committers waiting for the hardened LSN, woken exactly when it covers them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::io::ring::Token;
use crate::wal::Lsn;

#[derive(Default)]
pub struct HardenedWaiters {
    heap: BinaryHeap<Reverse<(Lsn, Token)>>,
}

impl HardenedWaiters {
    pub fn push(&mut self, lsn: Lsn, token: Token) {
        self.heap.push(Reverse((lsn, token)));
    }

    /// Moves every waiter with `lsn <= hardened` to `out`, and no other.
    pub fn take_satisfied(&mut self, hardened: Lsn, out: &mut Vec<Token>) {
        while let Some(Reverse((lsn, token))) = self.heap.peek().copied() {
            if lsn > hardened {
                break;
            }
            self.heap.pop();
            out.push(token);
        }
    }

    pub fn take_all(&mut self, out: &mut Vec<Token>) {
        out.extend(self.heap.drain().map(|Reverse((_, token))| token));
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_exactly_the_satisfied() {
        let mut w = HardenedWaiters::default();
        for (lsn, token) in [(40, 4), (10, 1), (30, 3), (20, 2), (30, 5)] {
            w.push(Lsn(lsn), token);
        }
        let mut out = Vec::new();
        w.take_satisfied(Lsn(25), &mut out);
        out.sort();
        assert_eq!(out, vec![1, 2]);
        out.clear();
        w.take_satisfied(Lsn(30), &mut out);
        out.sort();
        assert_eq!(out, vec![3, 5]);
        assert_eq!(w.len(), 1);
    }
}
