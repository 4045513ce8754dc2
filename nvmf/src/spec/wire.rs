//! Little-endian field helpers shared by the fixed-size wire structures of
//! this module. Every structure is a newtype over its byte array, and these
//! helpers are the one place where a field's bytes are read or written.
//!
//! Offsets passed here are constants written next to each field's doc
//! comment, always inside the structure; an out-of-range offset is a bug in
//! this crate (our invariant), never a consequence of peer input.

/// Declares a getter and a setter for a little-endian integer field at a
/// fixed byte offset of `self.0`.
macro_rules! le_field {
    ($(#[$m:meta])* $get:ident, $set:ident, $ty:ty, $off:expr) => {
        $(#[$m])*
        pub fn $get(&self) -> $ty {
            const N: usize = core::mem::size_of::<$ty>();
            let mut b = [0u8; N];
            b.copy_from_slice(&self.0[$off..$off + N]);
            <$ty>::from_le_bytes(b)
        }
        $(#[$m])*
        pub fn $set(&mut self, value: $ty) -> &mut Self {
            const N: usize = core::mem::size_of::<$ty>();
            self.0[$off..$off + N].copy_from_slice(&value.to_le_bytes());
            self
        }
    };
}
pub(crate) use le_field;

/// Writes `text` into `field`, padded with `pad` (spaces for the Identify
/// strings SN/MN/FR, NUL for NQNs and addresses); text longer than the field
/// is cut, which is why callers validate lengths beforehand.
pub(crate) fn put_padded(field: &mut [u8], text: &str, pad: u8) {
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
    for b in &mut field[n..] {
        *b = pad;
    }
}

/// Reads a padded ASCII/UTF-8 string field, dropping trailing NULs and
/// spaces; invalid UTF-8 yields `None`.
pub(crate) fn get_padded(field: &[u8]) -> Option<&str> {
    let end = field.iter().rposition(|&b| b != 0 && b != b' ').map_or(0, |p| p + 1);
    // A NUL terminator before the end ends the string (NQNs are NUL-terminated).
    let end = field[..end].iter().position(|&b| b == 0).unwrap_or(end);
    core::str::from_utf8(&field[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_strings_round_trip() {
        let mut f = [0u8; 8];
        put_padded(&mut f, "abc", b' ');
        assert_eq!(&f, b"abc     ");
        assert_eq!(get_padded(&f), Some("abc"));
        put_padded(&mut f, "abcdefghij", 0);
        assert_eq!(&f, b"abcdefgh");
        put_padded(&mut f, "x", 0);
        assert_eq!(get_padded(&f), Some("x"));
        assert_eq!(get_padded(&[0xff, 0xfe]), None);
        assert_eq!(get_padded(&[b'a', 0, b'b', 0]), Some("a"));
    }
}
