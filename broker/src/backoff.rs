//! Exponential backoff for the loops that retry work against something outside (webhook
//! receivers, GitHub): the delay before the next attempt doubles from a first delay up to a cap.

/// The delay (seconds) before attempt `attempts + 1`: `first` after the first failure, doubling,
/// at most `max`.
pub fn delay(attempts: i64, first: i64, max: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 16)).unwrap_or(16);
    first.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::delay;

    #[test]
    fn delays_double_from_the_first_to_the_cap() {
        assert_eq!([1, 2, 3, 4].map(|n| delay(n, 1, 300)), [1, 2, 4, 8]);
        assert_eq!([1, 2, 3, 4].map(|n| delay(n, 2, 300)), [2, 4, 8, 16]);
        assert_eq!(delay(0, 2, 300), 2, "no attempt yet counts as the first");
        assert_eq!(delay(40, 1, 300), 300);
        assert_eq!(delay(i64::MAX, i64::MAX, 300), 300, "no overflow");
    }
}
