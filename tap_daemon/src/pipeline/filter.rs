//! Which calls to record: networks and numbers to record or skip.

use std::net::IpAddr;

pub use rst_control::Pattern;

/// Which calls to record. An empty list does not restrict.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Record a call only if one of its addresses (signalling or media, either
    /// party) is in one of these networks.
    pub networks: Vec<ipnet::IpNet>,
    /// Record a call only if its caller or callee matches one of these.
    pub numbers: Vec<Pattern>,
    /// Never record a call whose caller or callee matches one of these.
    pub skip_numbers: Vec<Pattern>,
}

impl Filter {
    /// Whether a call with these parties and addresses is recorded.
    pub fn allows(&self, caller: &str, callee: &str, addresses: &[IpAddr]) -> bool {
        if !self.networks.is_empty()
            && !addresses
                .iter()
                .any(|ip| self.networks.iter().any(|net| net.contains(ip)))
        {
            return false;
        }
        let either = |p: &Pattern| p.matches(caller) || p.matches(callee);
        if !self.numbers.is_empty() && !self.numbers.iter().any(either) {
            return false;
        }
        !self.skip_numbers.iter().any(either)
    }
}
