//! Kubernetes resource quantities (`k8s.io/apimachinery/pkg/api/resource.Quantity`): parsing,
//! exact arithmetic and the API server's canonical string form.
//!
//! A value is held exactly in nano-units (10⁻⁹), the finest precision Kubernetes keeps: finer inputs
//! are rounded away from zero (`0.1n` → `1n`), and magnitudes above 2⁶³−1 units are capped, both as
//! `resource.ParseQuantity` does. The [`Format`] is remembered so that the value prints the way Go
//! prints it: `BinarySI` uses the largest exact `Ki`…`Ei` suffix (`16008824Ki`) and falls back to
//! decimal for values under 1024 or with a fraction; `DecimalSI` uses an exponent that is a multiple
//! of three (`1500m`, `3900m`, `2k`); `DecimalExponent` prints `e3` style. Arithmetic keeps the format
//! of the left operand unless it is zero, as `Quantity.Add`/`Sub` do.
//!
//! No crate on crates.io covers this with Go's formatting (`kube_quantity` works on decimals but
//! cannot produce `BinarySI` output from a byte count, `k8s_quantity_parser` is unmaintained), so
//! this is a small, exhaustively tested implementation.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

const NANO: i128 = 1_000_000_000;
/// `resource.maxAllowed`: 2⁶³−1 units.
const MAX_UNITS: i128 = i64::MAX as i128;
const MAX_NANOS: i128 = MAX_UNITS * NANO;

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
    )]
    Format(String),
    #[error("unable to parse quantity's suffix: {0:?}")]
    Suffix(String),
}

/// How a quantity prints (Go's `resource.Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `e3`, `1.5e-3` style.
    DecimalExponent,
    /// `Ki`, `Mi`, … `Ei`.
    BinarySI,
    /// `n`, `u`, `m`, (none), `k`, `M`, `G`, `T`, `P`, `E`.
    #[default]
    DecimalSI,
}

/// A Kubernetes quantity. Equality and ordering compare values only (`1Ki == 1024`), as
/// `apiequality.Semantic` does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

fn clamp(nanos: i128) -> i128 {
    nanos.clamp(-MAX_NANOS, MAX_NANOS)
}

impl Quantity {
    /// `resource.NewQuantity(value, format)`.
    pub fn new(units: i64, format: Format) -> Self {
        Self {
            nanos: i128::from(units) * NANO,
            format,
        }
    }

    /// `resource.NewMilliQuantity(milli, format)`.
    pub fn new_milli(milli: i64, format: Format) -> Self {
        Self {
            nanos: i128::from(milli) * 1_000_000,
            format,
        }
    }

    /// A byte count, as kubelet reports memory and storage (`BinarySI`).
    pub fn bytes(bytes: u64) -> Self {
        Self {
            nanos: clamp(i128::from(bytes) * NANO),
            format: Format::BinarySI,
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The same value, printed in `format`.
    pub fn with_format(self, format: Format) -> Self {
        Self { format, ..self }
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// The value in whole units, rounded up (Go's `Value()`).
    pub fn value(&self) -> i64 {
        let units = self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0);
        i64::try_from(units).unwrap_or(if units < 0 { i64::MIN } else { i64::MAX })
    }

    /// The value in thousandths, rounded up (Go's `MilliValue()`).
    pub fn milli_value(&self) -> i64 {
        let milli =
            self.nanos.div_euclid(1_000_000) + i128::from(self.nanos.rem_euclid(1_000_000) != 0);
        i64::try_from(milli).unwrap_or(if milli < 0 { i64::MIN } else { i64::MAX })
    }

    /// `q.Add(y)`: a zero receiver takes `y`'s format.
    pub fn add(&mut self, other: &Quantity) {
        if self.nanos == 0 {
            self.format = other.format;
        }
        self.nanos = clamp(self.nanos + other.nanos);
    }

    /// `q.Sub(y)`: a zero receiver takes `y`'s format.
    pub fn sub(&mut self, other: &Quantity) {
        if self.nanos == 0 {
            self.format = other.format;
        }
        self.nanos = clamp(self.nanos - other.nanos);
    }

    /// Sets the value to zero, keeping the format (`q.Set(0)`).
    pub fn set_zero(&mut self) {
        self.nanos = 0;
    }

    /// The `k8s-openapi` form, in canonical spelling.
    pub fn to_api(&self) -> ApiQuantity {
        ApiQuantity(self.to_string())
    }

    /// Parses a `k8s-openapi` quantity.
    pub fn from_api(q: &ApiQuantity) -> Result<Self, QuantityError> {
        q.0.parse()
    }
}

/// A decimal number as digits and a power of ten: value = digits × 10^exp10.
struct Decimal {
    digits: Vec<u8>,
    exp10: i64,
}

impl Decimal {
    fn multiply_small(&mut self, factor: u32) {
        let mut carry = 0u64;
        for d in self.digits.iter_mut().rev() {
            let v = u64::from(*d) * u64::from(factor) + carry;
            *d = (v % 10) as u8;
            carry = v / 10;
        }
        while carry > 0 {
            self.digits.insert(0, (carry % 10) as u8);
            carry /= 10;
        }
    }

    /// The magnitude in nano-units, rounded up; `None` beyond the cap.
    fn to_nanos(&self) -> Option<i128> {
        let digits: Vec<u8> = self
            .digits
            .iter()
            .copied()
            .skip_while(|d| *d == 0)
            .collect();
        if digits.is_empty() {
            return Some(0);
        }
        let shift = self.exp10.saturating_add(9);
        let (integer, round_up): (Vec<u8>, bool) = if shift >= 0 {
            // More than 30 digits is far beyond the cap; avoid building huge vectors.
            if (digits.len() as i64).saturating_add(shift) > 30 {
                return None;
            }
            let mut all = digits.clone();
            all.extend(std::iter::repeat_n(0, shift as usize));
            (all, false)
        } else {
            let cut = (digits.len() as i64).saturating_add(shift);
            if cut <= 0 {
                (Vec::new(), true)
            } else {
                let cut = cut as usize;
                (
                    digits[..cut].to_vec(),
                    digits[cut..].iter().any(|d| *d != 0),
                )
            }
        };
        if integer.len() > 30 {
            return None;
        }
        let mut value: i128 = 0;
        for d in integer {
            value = value * 10 + i128::from(d);
        }
        Some(value + i128::from(round_up))
    }
}

fn suffix_of(suffix: &str) -> Option<(u32, i64, Format)> {
    let decimal = match suffix {
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "" => Some(0),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(exp) = decimal {
        return Some((10, exp, Format::DecimalSI));
    }
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    if let Some(exp) = binary {
        return Some((2, exp, Format::BinarySI));
    }
    let rest = suffix.strip_prefix(['e', 'E'])?;
    if rest.is_empty() {
        return None;
    }
    // Go parses the exponent as an int64; anything out of range is an error there too.
    let exp: i64 = rest.parse().ok()?;
    Some((10, exp, Format::DecimalExponent))
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let format_error = || QuantityError::Format(text.to_string());
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Err(format_error());
        }
        let mut pos = 0;
        let negative = match bytes[0] {
            b'-' => {
                pos = 1;
                true
            }
            b'+' => {
                pos = 1;
                false
            }
            _ => false,
        };
        let int_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let int_digits = &bytes[int_start..pos];
        let mut frac_digits: &[u8] = &[];
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            frac_digits = &bytes[frac_start..pos];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(format_error());
        }
        // The suffix: letters from the set, an optional sign, then digits only.
        let suffix_start = pos;
        while pos < bytes.len() && b"eEinumkKMGTP".contains(&bytes[pos]) {
            pos += 1;
        }
        if pos < bytes.len() && (bytes[pos] == b'-' || bytes[pos] == b'+') {
            pos += 1;
        }
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos != bytes.len() {
            return Err(format_error());
        }
        let suffix = &text[suffix_start..];
        let (base, exponent, format) =
            suffix_of(suffix).ok_or_else(|| QuantityError::Suffix(suffix.to_string()))?;

        let mut decimal = Decimal {
            digits: int_digits
                .iter()
                .chain(frac_digits)
                .map(|d| d - b'0')
                .collect(),
            exp10: -(frac_digits.len() as i64),
        };
        if base == 10 {
            decimal.exp10 = decimal.exp10.saturating_add(exponent);
        } else {
            for _ in 0..exponent / 10 {
                decimal.multiply_small(1024);
            }
        }
        let magnitude = decimal.to_nanos().unwrap_or(MAX_NANOS).min(MAX_NANOS);
        Ok(Self {
            nanos: if negative { -magnitude } else { magnitude },
            format,
        })
    }
}

/// Removes factors of `base` from `value`: (value / base^n, n).
fn remove_factors(mut value: i128, base: i128) -> (i128, i64) {
    let mut times = 0;
    while value != 0 && value % base == 0 {
        value /= base;
        times += 1;
    }
    (value, times)
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let mut format = self.format;
        if format == Format::BinarySI && (self.nanos.abs() < 1024 * NANO || self.nanos % NANO != 0)
        {
            // Small or fractional values print in decimal, as Go does to avoid rounding.
            format = Format::DecimalSI;
        }
        if format == Format::BinarySI {
            let (mantissa, times) = remove_factors(self.nanos / NANO, 1024);
            let suffix = match times {
                0 => "",
                1 => "Ki",
                2 => "Mi",
                3 => "Gi",
                4 => "Ti",
                5 => "Pi",
                _ => "Ei",
            };
            // Values are capped below 2⁶³, so `times` never exceeds 6.
            return write!(f, "{mantissa}{suffix}");
        }
        let (mut mantissa, times) = remove_factors(self.nanos, 10);
        let mut exponent = times - 9;
        match exponent.rem_euclid(3) {
            1 => {
                mantissa *= 10;
                exponent -= 1;
            }
            2 => {
                mantissa *= 100;
                exponent -= 2;
            }
            _ => {}
        }
        if format == Format::DecimalExponent {
            return if exponent == 0 {
                write!(f, "{mantissa}")
            } else {
                write!(f, "{mantissa}e{exponent}")
            };
        }
        let suffix = match exponent {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => return write!(f, "{mantissa}e{exponent}"),
        };
        write!(f, "{mantissa}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quantity {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[test]
    fn canonical_forms_match_go() {
        // (input, canonical String() as the Go implementation prints it)
        for (input, canonical) in [
            ("0", "0"),
            ("0Mi", "0"),
            ("1", "1"),
            ("100m", "100m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("0.1", "100m"),
            (".5", "500m"),
            ("5.", "5"),
            ("1k", "1k"),
            ("1000", "1k"),
            ("1024", "1024"),
            ("12e6", "12e6"),
            ("1e3", "1e3"),
            ("1E3", "1e3"),
            ("1e-3", "1e-3"),
            ("1.5e3", "1500"),
            ("1Ki", "1Ki"),
            ("1024Ki", "1Mi"),
            ("1536", "1536"),
            ("1.5Ki", "1536"),
            ("0.5Gi", "512Mi"),
            ("100Mi", "100Mi"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("123Mi", "123Mi"),
            ("1G", "1G"),
            ("1E", "1E"),
            ("1Ei", "1Ei"),
            ("+5", "5"),
            ("-5", "-5"),
            ("-1.5", "-1500m"),
            ("-1Ki", "-1Ki"),
            ("1n", "1n"),
            ("0.1n", "1n"),
            ("1u", "1u"),
            ("10u", "10u"),
            ("1000u", "1m"),
            ("0.1Ki", "102400m"),
        ] {
            assert_eq!(q(input).to_string(), canonical, "{input}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "", " ", "1 ", "abc", ".", "-", "1.2.3", "1Ki1", "1e", "1KiB", "1x", "1kk", "1e1.5",
            "--1",
        ] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn values_are_exact_and_round_up() {
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("100Mi").value(), 100 << 20);
        assert_eq!(q("1.5").value(), 2, "Value() rounds up");
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1").milli_value(), 1000);
    }

    #[test]
    fn huge_values_are_capped() {
        assert_eq!(q("100Ei").value(), i64::MAX);
        assert_eq!(q("99999999999999999999999999999999").value(), i64::MAX);
        assert_eq!(
            q("0.000000000000000000000000000000000000001").to_string(),
            "1n"
        );
    }

    #[test]
    fn equality_ignores_format() {
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1"), q("1000m"));
        assert!(q("1Mi") > q("1M"));
    }

    #[test]
    fn bytes_print_like_kubelet_capacity() {
        // A 15.27 GiB machine (16008824 kB): cadvisor's MemTotal in bytes, printed as BinarySI.
        assert_eq!(Quantity::bytes(16_393_035_776).to_string(), "16008824Ki");
        assert_eq!(Quantity::bytes(512).to_string(), "512");
        assert_eq!(Quantity::bytes(1000).to_string(), "1k");
        assert_eq!(Quantity::bytes(1025).to_string(), "1025");
        assert_eq!(
            Quantity::new_milli(4000, Format::DecimalSI).to_string(),
            "4"
        );
        assert_eq!(Quantity::new(110, Format::DecimalSI).to_string(), "110");
    }

    #[test]
    fn arithmetic_keeps_the_receivers_format() {
        let mut mem = Quantity::bytes(16_393_035_776);
        mem.sub(&q("100Mi"));
        assert_eq!(mem.to_string(), "15906424Ki");
        let mut cpu = Quantity::new_milli(4000, Format::DecimalSI);
        cpu.sub(&q("100m"));
        assert_eq!(cpu.to_string(), "3900m");
        let mut zero = Quantity::new(0, Format::DecimalSI);
        zero.add(&q("1Gi"));
        assert_eq!(
            zero.to_string(),
            "1Gi",
            "a zero receiver takes the other's format"
        );
        let mut negative = q("1Ki");
        negative.sub(&q("2Ki"));
        assert!(negative.is_negative());
        assert_eq!(negative.to_string(), "-1Ki");
        negative.set_zero();
        assert_eq!(negative.to_string(), "0");
    }

    #[test]
    fn api_round_trip() {
        let api = ApiQuantity("2Gi".into());
        let parsed = Quantity::from_api(&api).expect("valid");
        assert_eq!(parsed.to_api(), api);
        assert_eq!(parsed.format(), Format::BinarySI);
    }
}
