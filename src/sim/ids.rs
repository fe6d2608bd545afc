//! Identifier generation: deterministic Fastly-style ids for seeded records, and purge ids.

use std::sync::atomic::{AtomicU64, Ordering};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of Fastly's service, user, customer and token ids.
pub const ID_LEN: usize = 22;

/// Derives a 22-character alphanumeric id from a label and an index. The same inputs always
/// give the same id, so seeded services keep their ids across runs.
pub fn derive_id(label: &str, index: u64) -> String {
    // FNV-1a over the label, then splitmix64 steps to spread the bits over 22 characters.
    let mut state = 0xcbf2_9ce4_8422_2325_u64;
    for byte in label.bytes() {
        state ^= u64::from(byte);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state ^= index.wrapping_mul(0x9e37_79b9_7f4a_7c15);

    let mut id = String::with_capacity(ID_LEN);
    let mut bits = 0_u64;
    for position in 0..ID_LEN {
        if position % 10 == 0 {
            bits = splitmix64(&mut state);
        }
        id.push(char::from(ALPHABET[(bits % 62) as usize]));
        bits /= 62;
    }
    id
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Source of purge ids in Fastly's `<node>-<epoch>-<sequence>` form, e.g.
/// `4151-1635861748-11035`. Every purged key or URL gets its own sequence number.
#[derive(Debug)]
pub struct PurgeIds {
    node: u32,
    epoch: i64,
    sequence: AtomicU64,
}

impl PurgeIds {
    pub fn new(node: u32, epoch: i64) -> Self {
        Self {
            node,
            epoch,
            sequence: AtomicU64::new(10_000),
        }
    }

    pub fn next_id(&self) -> String {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}-{}", self.node, self.epoch, sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_id_is_stable_and_alphanumeric() {
        let first = derive_id("service", 7);

        assert_eq!(first, derive_id("service", 7));
        assert_eq!(first.len(), ID_LEN);
        assert!(first.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        assert_ne!(first, derive_id("service", 8));
        assert_ne!(first, derive_id("user", 7));
    }

    #[test]
    fn purge_ids_are_unique() {
        let ids = PurgeIds::new(4151, 1_635_861_748);

        let first = ids.next_id();
        let second = ids.next_id();

        assert_eq!(first, "4151-1635861748-10000");
        assert_eq!(second, "4151-1635861748-10001");
    }
}
