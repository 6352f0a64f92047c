//! Wall-clock helpers: Unix time and the handshake's `yyyymmdd hh:mm:ss UTC` string.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

use ib_stream_tws::civil::civil_from_days;

/// The connection time a gateway sends in its handshake answer. rust-ibapi parses the zone,
/// so it is always UTC.
pub fn connection_time(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_the_gateway_way() {
        assert_eq!(super::connection_time(0), "19700101 00:00:00 UTC");
        assert_eq!(
            super::connection_time(1_767_277_800),
            "20260101 14:30:00 UTC"
        );
    }
}
