//! The part of URL parsing the gateway (`ws://`, `wss://`) and HTTP (`http://`, `https://`)
//! clients share: `host[:port]` with bracketed IPv6 literals.

/// Why an authority did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityError {
    Host,
    Port,
}

/// Splits `host[:port]` (`[v6]` or `[v6]:port` included); `default_port` when absent.
pub fn split_authority(
    authority: &str,
    default_port: u16,
) -> Result<(String, u16), AuthorityError> {
    let (host, port) = match authority.rsplit_once(':') {
        // A colon inside the brackets of an IPv6 literal is not a port separator.
        Some((host, port)) if !port.contains(']') => {
            (host, port.parse().map_err(|_| AuthorityError::Port)?)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(AuthorityError::Host);
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("h", 80), Ok(("h".into(), 80)));
        assert_eq!(split_authority("h:9", 80), Ok(("h".into(), 9)));
        assert_eq!(split_authority("[::1]", 443), Ok(("::1".into(), 443)));
        assert_eq!(split_authority("[::1]:8080", 443), Ok(("::1".into(), 8080)));
        assert_eq!(split_authority(":80", 80), Err(AuthorityError::Host));
        assert_eq!(split_authority("h:x", 80), Err(AuthorityError::Port));
        assert_eq!(split_authority("h:99999", 80), Err(AuthorityError::Port));
    }
}
