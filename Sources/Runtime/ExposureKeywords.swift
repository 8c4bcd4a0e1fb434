import Foundation

/// What a FITS header says about the exposure: gain (electrons per image unit), exposure time,
/// read noise and a recorded sky level, each with the keyword it came from.
public struct ExposureKeywords: Equatable, Sendable {
    public var gain: (value: Double, source: String)?
    public var exposureTime: (value: Double, source: String)?
    public var readNoise: (value: Double, source: String)?
    public var sky: (value: Double, source: String)?

    public static func == (a: ExposureKeywords, b: ExposureKeywords) -> Bool {
        a.gain?.value == b.gain?.value && a.exposureTime?.value == b.exposureTime?.value
            && a.readNoise?.value == b.readNoise?.value && a.sky?.value == b.sky?.value
    }

    /// Reads the usual keywords through `keyword` (a header look-up). Gain: GAIN, EGAIN, CCDGAIN,
    /// GAINEFF; an image in electrons (BUNIT 'electrons', 'e-') has gain 1 and one in electrons per
    /// second ('electrons/s', 'e-/s') has gain EXPTIME. Exposure time: EXPTIME, EXPOSURE,
    /// TEXPTIME, EXP_TIME. Read noise: RDNOISE, READNOIS, RON, READNOISE, ENOISE. Sky: SKYLEVEL,
    /// SKY, SKYSUB (a level that was subtracted).
    public init(keyword: (String) -> String?) {
        func number(_ names: [String]) -> (Double, String)? {
            for n in names { if let s = keyword(n), let v = Double(s.trimmingCharacters(in: .whitespaces)), v.isFinite { return (v, n) } }
            return nil
        }
        exposureTime = number(["EXPTIME", "EXPOSURE", "TEXPTIME", "EXP_TIME"]).flatMap { $0.0 > 0 ? $0 : nil }
        readNoise = number(["RDNOISE", "READNOIS", "RON", "READNOISE", "ENOISE"]).flatMap { $0.0 >= 0 ? $0 : nil }
        sky = number(["SKYLEVEL", "SKYSUB", "SKY"])
        gain = number(["GAIN", "EGAIN", "CCDGAIN", "GAINEFF"]).flatMap { $0.0 > 0 ? $0 : nil }
        if gain == nil, let unit = keyword("BUNIT")?.lowercased().replacingOccurrences(of: " ", with: "") {
            if ["electrons", "electron", "e-", "e"].contains(unit) {
                gain = (1, "BUNIT=\(unit)")
            } else if ["electrons/s", "electron/s", "e-/s", "e/s", "electrons/sec"].contains(unit), let t = exposureTime {
                gain = (t.value, "BUNIT=\(unit) x \(t.source)")
            }
        }
    }

    public init() {}
}
