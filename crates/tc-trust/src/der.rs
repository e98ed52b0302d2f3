//! Just enough DER to find two fields of an X.509 certificate: the SubjectPublicKeyInfo (for the
//! fingerprint) and the end of the validity period (to renew a certificate in time). A full
//! X.509 parser would cost the agent far more code than these few lines.
//!
//! ```text
//! Certificate ::= SEQUENCE { tbsCertificate TBSCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] EXPLICIT version OPTIONAL, serialNumber INTEGER,
//!     signature AlgorithmIdentifier, issuer Name, validity Validity, subject Name,
//!     subjectPublicKeyInfo SubjectPublicKeyInfo, ... }
//! Validity ::= SEQUENCE { notBefore Time, notAfter Time }   -- UTCTime or GeneralizedTime
//! ```

/// Why a certificate could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed X.509 certificate: {0}")]
pub struct DerError(pub &'static str);

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One element: its tag, its whole encoding and its content.
struct Element<'a> {
    tag: u8,
    whole: &'a [u8],
    content: &'a [u8],
}

/// Reads the element at the start of `input`; returns it and what follows.
fn element(input: &[u8]) -> Result<(Element<'_>, &[u8]), DerError> {
    let truncated = DerError("truncated");
    let (&tag, rest) = input.split_first().ok_or(truncated.clone())?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("multi-byte tags are not used in certificates"));
    }
    let (&first, rest) = rest.split_first().ok_or(truncated.clone())?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err(DerError("bad length"));
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return Err(truncated);
    }
    let header = input.len() - rest.len();
    Ok((
        Element {
            tag,
            whole: &input[..header + length],
            content: &rest[..length],
        },
        &rest[length..],
    ))
}

/// The elements of the TBSCertificate up to and including the SubjectPublicKeyInfo:
/// `[serial, signature, issuer, validity, subject, spki]`.
fn tbs_fields(certificate: &[u8]) -> Result<[Element<'_>; 6], DerError> {
    let (outer, trailing) = element(certificate)?;
    if outer.tag != SEQUENCE || !trailing.is_empty() {
        return Err(DerError("not a certificate"));
    }
    let (tbs, _) = element(outer.content)?;
    if tbs.tag != SEQUENCE {
        return Err(DerError("no TBSCertificate"));
    }
    let mut rest = tbs.content;
    let (first, after) = element(rest)?;
    if first.tag == VERSION {
        rest = after;
    }
    let mut next = || -> Result<Element<'_>, DerError> {
        let (field, after) = element(rest)?;
        rest = after;
        Ok(field)
    };
    let fields = [next()?, next()?, next()?, next()?, next()?, next()?];
    if fields[3].tag != SEQUENCE || fields[5].tag != SEQUENCE {
        return Err(DerError("unexpected TBSCertificate layout"));
    }
    Ok(fields)
}

/// The DER encoding of the certificate's SubjectPublicKeyInfo.
pub fn subject_public_key_info(certificate: &[u8]) -> Result<&[u8], DerError> {
    let [_, _, _, _, _, spki] = tbs_fields(certificate)?;
    Ok(spki.whole)
}

/// The end of the certificate's validity period, in seconds since the Unix epoch.
pub fn not_after(certificate: &[u8]) -> Result<i64, DerError> {
    let [_, _, _, validity, _, _] = tbs_fields(certificate)?;
    let (_not_before, rest) = element(validity.content)?;
    let (not_after, _) = element(rest)?;
    parse_time(not_after.tag, not_after.content)
}

/// The DNS names and IP addresses of the certificate's subjectAltName extension, as text
/// (`localhost`, `127.0.0.1`, `::1`).
pub fn subject_alt_names(certificate: &[u8]) -> Result<Vec<String>, DerError> {
    const EXTENSIONS: u8 = 0xa3;
    const SUBJECT_ALT_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    const OCTET_STRING: u8 = 0x04;
    const DNS_NAME: u8 = 0x82;
    const IP_ADDRESS: u8 = 0x87;
    let (outer, _) = element(certificate)?;
    let (tbs, _) = element(outer.content)?;
    let spki = subject_public_key_info(certificate)?;
    // What follows the SubjectPublicKeyInfo: optional unique ids, then the extensions.
    let offset = spki.as_ptr() as usize - tbs.content.as_ptr() as usize + spki.len();
    let mut rest = &tbs.content[offset..];
    let mut names = vec![];
    while !rest.is_empty() {
        let (field, after) = element(rest)?;
        rest = after;
        if field.tag != EXTENSIONS {
            continue;
        }
        let (list, _) = element(field.content)?;
        let mut extensions = list.content;
        while !extensions.is_empty() {
            let (extension, after) = element(extensions)?;
            extensions = after;
            if !extension.content.starts_with(SUBJECT_ALT_NAME) {
                continue;
            }
            let mut parts = &extension.content[SUBJECT_ALT_NAME.len()..];
            let value = loop {
                let (part, after) = element(parts)?;
                parts = after;
                if part.tag == OCTET_STRING {
                    break part.content;
                }
            };
            let (general_names, _) = element(value)?;
            let mut entries = general_names.content;
            while !entries.is_empty() {
                let (entry, after) = element(entries)?;
                entries = after;
                match (entry.tag, entry.content.len()) {
                    (DNS_NAME, _) => {
                        names.push(String::from_utf8_lossy(entry.content).into_owned())
                    }
                    (IP_ADDRESS, 4) => {
                        let octets: [u8; 4] = entry.content.try_into().expect("four bytes");
                        names.push(std::net::Ipv4Addr::from(octets).to_string());
                    }
                    (IP_ADDRESS, 16) => {
                        let octets: [u8; 16] = entry.content.try_into().expect("16 bytes");
                        names.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(names)
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as RFC 5280 requires them.
fn parse_time(tag: u8, text: &[u8]) -> Result<i64, DerError> {
    let bad = DerError("bad time");
    let digits = |range: std::ops::Range<usize>| -> Result<i64, DerError> {
        let part = text.get(range).ok_or(bad.clone())?;
        part.iter().try_fold(0i64, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + i64::from(byte - b'0'))
                .ok_or(bad.clone())
        })
    };
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 13) => {
            let year = digits(0..2)?;
            (if year < 50 { 2000 + year } else { 1900 + year }, 2)
        }
        (GENERALIZED_TIME, 15) => (digits(0..4)?, 4),
        _ => return Err(bad),
    };
    if text.last() != Some(&b'Z') {
        return Err(bad);
    }
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let minute = digits(rest + 6..rest + 8)?;
    let second = digits(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_both_encodings() {
        assert_eq!(parse_time(UTC_TIME, b"700101000000Z"), Ok(0));
        assert_eq!(parse_time(UTC_TIME, b"000229120000Z"), Ok(951_825_600));
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20500101000000Z"),
            Ok(2_524_608_000)
        );
        assert_eq!(
            parse_time(UTC_TIME, b"700101000000+"),
            Err(DerError("bad time"))
        );
        assert_eq!(
            parse_time(UTC_TIME, b"701301000000Z"),
            Err(DerError("bad time"))
        );
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"700101000000Z"),
            Err(DerError("bad time"))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x85\0\0\0\0\0",
            b"\x30\x02\x30\x00",
            b"\x04\x00",
        ] {
            assert!(subject_public_key_info(input).is_err(), "{input:?}");
            assert!(not_after(input).is_err(), "{input:?}");
        }
    }
}
