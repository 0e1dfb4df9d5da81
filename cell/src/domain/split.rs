//! The double-average split (seed 002): each claim draws uniformly from
//! `[1, 2 * remaining_amount / remaining_count]`, the last claim takes the rest.
//!
//! Invariants (property-tested): every share is at least 1 cent, the shares of a packet sum
//! exactly to its total, and no draw leaves fewer cents than the shares still to come.

use rand::Rng;

/// The amount of the next claim on a packet with `remaining_amount` cents left for
/// `remaining_count` shares. Requires `remaining_count >= 1` and
/// `remaining_amount >= remaining_count` (every share gets at least a cent).
pub fn next_share<R: Rng + ?Sized>(
    rng: &mut R,
    remaining_amount: i64,
    remaining_count: i64,
) -> i64 {
    debug_assert!(remaining_count >= 1 && remaining_amount >= remaining_count);
    if remaining_count <= 1 {
        return remaining_amount;
    }
    let upper = (2 * remaining_amount / remaining_count)
        // Leave at least one cent for each later share.
        .min(remaining_amount - (remaining_count - 1))
        .max(1);
    rng.gen_range(1..=upper)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;

    proptest! {
        #[test]
        fn shares_sum_to_total_and_are_positive(
            count in 1i64..=200,
            extra in 0i64..=1_000_000,
            seed in any::<u64>(),
        ) {
            let total = count + extra;
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut amount, mut left) = (total, count);
            let mut sum = 0;
            while left > 0 {
                let share = next_share(&mut rng, amount, left);
                prop_assert!(share >= 1);
                prop_assert!(share <= amount - (left - 1));
                if left > 1 {
                    prop_assert!(share <= 2 * amount / left);
                }
                amount -= share;
                left -= 1;
                sum += share;
            }
            prop_assert_eq!(sum, total);
            prop_assert_eq!(amount, 0);
        }
    }

    #[test]
    fn one_cent_each_when_total_equals_count() {
        let mut rng = rand::thread_rng();
        for left in (1..=50).rev() {
            assert_eq!(next_share(&mut rng, left, left), 1);
        }
    }
}
