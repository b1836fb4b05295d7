//! Netlink message and route-attribute encoding and parsing.
//!
//! Everything read here may come from a peer we do not trust: every length is checked
//! against the bytes actually present, and bad input is a [`NetlinkError::Malformed`],
//! never a panic or an out-of-bounds read.

use crate::NetlinkError;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct rtattr` (and `struct nlattr`).
pub const RTA_HDRLEN: usize = 4;
/// Attribute type bits that are flags, not part of the type.
const NLA_TYPE_MASK: u16 = !(libc::NLA_F_NESTED as u16 | libc::NLA_F_NET_BYTEORDER as u16);

/// Rounds `len` up to netlink's 4-byte alignment, or `None` on overflow.
pub fn align(len: usize) -> Option<usize> {
    len.checked_add(3).map(|l| l & !3)
}

/// A netlink message being built: the header is filled in by [`MessageBuilder::finish`].
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// A message of type `ty` with header flags `flags` and the fixed-size family header
    /// `fixed` (e.g. an `ifinfomsg`).
    pub fn new(ty: u16, flags: u16, fixed: &[u8]) -> MessageBuilder {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        MessageBuilder { buf }
    }

    /// Appends attribute `ty` with payload `data`.
    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = RTA_HDRLEN + data.len();
        let len = u16::try_from(len).expect("netlink attribute larger than 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    /// Appends a u32 attribute.
    pub fn attr_u32(&mut self, ty: u16, value: u32) -> &mut Self {
        self.attr(ty, &value.to_ne_bytes())
    }

    /// Appends a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, value: &str) -> &mut Self {
        let mut data = Vec::with_capacity(value.len() + 1);
        data.extend_from_slice(value.as_bytes());
        data.push(0);
        self.attr(ty, &data)
    }

    /// Starts a nested attribute; close it with [`MessageBuilder::end_nested`]. (Without
    /// NLA_F_NESTED, as iproute2 sends the old nested attributes.)
    pub fn begin_nested(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }

    /// Closes the nested attribute started at `start`.
    pub fn end_nested(&mut self, start: usize) -> &mut Self {
        let len = u16::try_from(self.buf.len() - start).expect("netlink attribute larger than 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// The finished message with sequence number `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("netlink message larger than 4 GiB");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() & 3 != 0 {
        buf.push(0);
    }
}

/// One parsed netlink message: header fields and the payload after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

/// The messages of one received datagram.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

/// Iterator over the messages of a datagram; stops after the first error.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        if rest.len() < NLMSG_HDRLEN {
            return Some(Err(malformed(format!("{} bytes left over, shorter than a message header", rest.len()))));
        }
        let len = u32_at(rest, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Some(Err(malformed(format!("message length {len} with {} bytes present", rest.len()))));
        }
        let message = Message {
            ty: u16_at(rest, 4).unwrap_or(0),
            flags: u16_at(rest, 6).unwrap_or(0),
            seq: u32_at(rest, 8).unwrap_or(0),
            pid: u32_at(rest, 12).unwrap_or(0),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        // The last message of a datagram need not be padded.
        self.rest = rest.get(align(len).unwrap_or(usize::MAX)..).unwrap_or(&[]);
        Some(Ok(message))
    }
}

/// Splits a message payload into its fixed-size family header (`fixed` bytes) and its
/// attributes.
pub fn split_fixed<'a>(payload: &'a [u8], fixed: usize, what: &str) -> Result<(&'a [u8], Attrs<'a>), NetlinkError> {
    if payload.len() < fixed {
        return Err(malformed(format!("{what} of {} bytes, shorter than its {fixed}-byte header", payload.len())));
    }
    let attrs = payload.get(align(fixed).unwrap_or(usize::MAX)..).unwrap_or(&[]);
    Ok((&payload[..fixed], attrs_of(attrs)))
}

/// The attributes in `buf`.
pub fn attrs_of(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

/// Iterator over route attributes: `(type, payload)`, the nested/byte-order flags
/// removed from the type; stops after the first error.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        if rest.len() < RTA_HDRLEN {
            return Some(Err(malformed(format!("{} bytes left over, shorter than an attribute header", rest.len()))));
        }
        let len = u16_at(rest, 0).unwrap_or(0) as usize;
        let ty = u16_at(rest, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > rest.len() {
            return Some(Err(malformed(format!("attribute {ty} of length {len} with {} bytes present", rest.len()))));
        }
        self.rest = rest.get(align(len).unwrap_or(usize::MAX)..).unwrap_or(&[]);
        Some(Ok((ty, &rest[RTA_HDRLEN..len])))
    }
}

pub(crate) fn malformed(what: impl Into<String>) -> NetlinkError {
    NetlinkError::Malformed(what.into())
}

/// A native-endian u16 at `offset`, if present.
pub fn u16_at(buf: &[u8], offset: usize) -> Option<u16> {
    let bytes = buf.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes([bytes[0], bytes[1]]))
}

/// A native-endian u32 at `offset`, if present.
pub fn u32_at(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A u32 attribute's value: exactly 4 bytes.
pub fn attr_u32(ty: u16, data: &[u8], what: &str) -> Result<u32, NetlinkError> {
    match data {
        [a, b, c, d] => Ok(u32::from_ne_bytes([*a, *b, *c, *d])),
        _ => Err(malformed(format!("{what}: attribute {ty} of {} bytes, expected 4", data.len()))),
    }
}

/// A string attribute's value: up to the first NUL (or the end), valid UTF-8.
pub fn attr_string(ty: u16, data: &[u8], what: &str) -> Result<String, NetlinkError> {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8(data[..end].to_vec()).map_err(|_| malformed(format!("{what}: attribute {ty} is not UTF-8")))
}

/// An IP address attribute of the given family (4 or 16 bytes).
pub fn attr_ip(ty: u16, data: &[u8], ipv6: bool, what: &str) -> Result<std::net::IpAddr, NetlinkError> {
    if ipv6 {
        let bytes: [u8; 16] =
            data.try_into().map_err(|_| malformed(format!("{what}: IPv6 address attribute {ty} of {} bytes", data.len())))?;
        Ok(std::net::Ipv6Addr::from(bytes).into())
    } else {
        let bytes: [u8; 4] =
            data.try_into().map_err(|_| malformed(format!("{what}: IPv4 address attribute {ty} of {} bytes", data.len())))?;
        Ok(std::net::Ipv4Addr::from(bytes).into())
    }
}

/// The bytes of an address, as netlink carries them.
pub fn ip_bytes(addr: &std::net::IpAddr) -> Vec<u8> {
    match addr {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32, ty: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&len.to_ne_bytes());
        h.extend_from_slice(&ty.to_ne_bytes());
        h.extend_from_slice(&0u16.to_ne_bytes());
        h.extend_from_slice(&7u32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h
    }

    #[test]
    fn built_messages_parse_back() {
        let mut b = MessageBuilder::new(16, 5, &[1, 2, 3]);
        b.attr_str(3, "eth0").attr_u32(4, 1400);
        let nested = b.begin_nested(18);
        b.attr_str(1, "veth");
        b.end_nested(nested);
        let buf = b.finish(42);
        assert_eq!(buf.len() % 4, 0);
        let msgs: Vec<_> = messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let m = msgs[0];
        assert_eq!((m.ty, m.flags, m.seq), (16, 5, 42));
        let (fixed, attrs) = split_fixed(m.payload, 3, "test").unwrap();
        assert_eq!(fixed, &[1, 2, 3]);
        let attrs: Vec<_> = attrs.collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs.len(), 3);
        assert_eq!(attr_string(attrs[0].0, attrs[0].1, "t").unwrap(), "eth0");
        assert_eq!(attr_u32(attrs[1].0, attrs[1].1, "t").unwrap(), 1400);
        assert_eq!(attrs[2].0, 18);
        let inner: Vec<_> = attrs_of(attrs[2].1).collect::<Result<_, _>>().unwrap();
        assert_eq!(attr_string(inner[0].0, inner[0].1, "t").unwrap(), "veth");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        // Truncated header.
        assert!(messages(&[1, 2, 3]).next().unwrap().is_err());
        // Length shorter than a header, longer than the buffer, absurdly large.
        for len in [0u32, 15, 17, 1000, u32::MAX] {
            let buf = header(len, 3);
            assert!(messages(&buf).next().unwrap().is_err(), "len {len}");
        }
        // A good message followed by garbage: the first parses, then an error.
        let mut buf = header(16, 3);
        buf.extend_from_slice(&[0xff; 7]);
        let mut it = messages(&buf);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        // Attributes: truncated, length below the header, beyond the buffer.
        for attrs in [&[4u8, 0][..], &[2, 0, 1, 0], &[200, 0, 1, 0, 0, 0, 0, 0], &[0xff, 0xff, 0xff, 0xff]] {
            assert!(attrs_of(attrs).any(|a| a.is_err()), "{attrs:?}");
        }
        // Fixed header longer than the payload.
        assert!(split_fixed(&[0; 4], 16, "ifinfomsg").is_err());
        // Wrongly sized values.
        assert!(attr_u32(4, &[1, 2, 3], "t").is_err());
        assert!(attr_ip(1, &[1, 2, 3, 4, 5], false, "t").is_err());
        assert!(attr_ip(1, &[1, 2, 3, 4], true, "t").is_err());
        assert!(attr_string(3, &[0xff, 0xfe, 0], "t").is_err());
        // Pseudo-random garbage never panics.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 97) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            for m in messages(&buf).flatten() {
                let _ = split_fixed(m.payload, 8, "t").map(|(_, a)| a.count());
                let _ = attrs_of(m.payload).count();
            }
            let _ = attrs_of(&buf).count();
        }
    }

    #[test]
    fn unpadded_last_message_is_accepted() {
        let mut buf = header(18, 3);
        buf.extend_from_slice(&[1, 2]);
        let m = messages(&buf).next().unwrap().unwrap();
        assert_eq!(m.payload, &[1, 2]);
    }
}
