//! How a user proved who they are: RFC 8176 authentication method references (`amr`), kept as a
//! bit set in sessions and as the standard `amr` claim (an array of names) in JWTs.

/// A set of [`PWD`], [`OTP`], ...
pub type Amr = u8;

/// A password (RFC 8176 `pwd`).
pub const PWD: Amr = 1;
/// A one-time code from an authenticator app, or a recovery code (RFC 8176 `otp`).
pub const OTP: Amr = 2;

/// Signed in at an external OpenID Connect provider, which vouched for the user (not an RFC
/// 8176 name: `ext`). With the provider's own multi-factor login it comes with `pwd` + `otp`.
pub const EXT: Amr = 4;

const NAMES: [(Amr, &str); 3] = [(PWD, "pwd"), (OTP, "otp"), (EXT, "ext")];

/// The RFC 8176 names in `amr`, in a fixed order.
pub fn names(amr: Amr) -> Vec<&'static str> {
    NAMES
        .iter()
        .filter(|(bit, _)| amr & bit != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// Parses names back; unknown names are ignored (a newer gateway may know more), and nothing
/// known counts as a password alone, what every credential before `amr` existed was.
pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Amr {
    let amr = names
        .into_iter()
        .filter_map(|n| NAMES.iter().find(|(_, m)| *m == n).map(|(b, _)| *b))
        .fold(0, |a, b| a | b);
    if amr == 0 {
        PWD
    } else {
        amr
    }
}

/// Whether `amr` includes a second factor.
pub fn is_multi_factor(amr: Amr) -> bool {
    amr & OTP != 0 && amr & PWD != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amr_names_round_trip_and_unknown_means_password() {
        assert_eq!(names(PWD | OTP), ["pwd", "otp"]);
        assert_eq!(parse(["otp", "pwd"]), PWD | OTP);
        assert_eq!(parse(["hwk"]), PWD);
        assert_eq!(parse(["ext"]), EXT);
        assert_eq!(names(EXT | PWD | OTP), ["pwd", "otp", "ext"]);
        assert!(!is_multi_factor(EXT));
        assert_eq!(parse(Vec::<&str>::new()), PWD);
        assert!(is_multi_factor(PWD | OTP));
        assert!(!is_multi_factor(PWD));
    }
}
