// swift-tools-version:6.0
import PackageDescription

// The x86-64 kernel targets are compiled for their ISA; the runtime picks one by cpuid, so a
// plain `swift build -c release` gives one binary that is fast on AVX-512 and AVX2 CPUs and still
// runs on older ones. On other architectures these targets compile to nothing.
#if arch(x86_64)
let avx512Flags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "skylake-avx512"])]
let avx2Flags: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let avx512Flags: [SwiftSetting] = []
let avx2Flags: [SwiftSetting] = []
#endif

let package = Package(
    name: "AstroCNN",
    products: [
        .library(name: "ModelFormat", targets: ["ModelFormat"]),
        .library(name: "Kernels", targets: ["Kernels"]),
        .library(name: "Runtime", targets: ["Runtime"]),
        .library(name: "Reporting", targets: ["Reporting"]),
        .library(name: "Imaging", targets: ["Imaging"]),
        .library(name: "Trainer", targets: ["Trainer"]),
        .library(name: "Evaluation", targets: ["Evaluation"]),
        .executable(name: "astrocnn", targets: ["astrocnn"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CFITSIO",
            pkgConfig: "cfitsio",
            providers: [.apt(["libcfitsio-dev"])]
        ),
        .target(name: "CRC32CHardware"),
        .target(name: "ModelFormat", dependencies: ["CRC32CHardware"]),
        .target(name: "CPUFeatures"),
        .target(name: "KernelsAVX512", swiftSettings: avx512Flags),
        .target(name: "KernelsAVX2", swiftSettings: avx2Flags),
        .target(name: "Kernels", dependencies: ["CPUFeatures", "KernelsAVX512", "KernelsAVX2"]),
        .target(name: "Runtime", dependencies: ["ModelFormat", "Kernels", "CFITSIO"]),
        .target(name: "Reporting", dependencies: ["ModelFormat"]),
        .target(name: "Imaging", dependencies: ["ModelFormat", "Runtime"]),
        .target(name: "Trainer", dependencies: ["ModelFormat", "Kernels", "Runtime", "Imaging"]),
        .target(name: "Evaluation", dependencies: ["Imaging", "Runtime", "ModelFormat", "Reporting"]),
        .target(name: "Fuzzing", dependencies: ["Runtime", "ModelFormat", "CFITSIO", "CPUFeatures"]),
        .executableTarget(
            name: "astrocnn",
            dependencies: [
                "Runtime", "ModelFormat", "Kernels", "Reporting", "Imaging", "Trainer", "Evaluation", "CPUFeatures", "Fuzzing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "ModelFormatTests", dependencies: ["ModelFormat"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "ModelFormat"]),
        .testTarget(name: "ImagingTests", dependencies: ["Imaging", "ModelFormat", "Runtime"]),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "Imaging", "Runtime"]),
        .testTarget(name: "TrainerTests", dependencies: ["Trainer", "Imaging", "Runtime", "ModelFormat", "Kernels"]),
        .testTarget(name: "ReportingTests", dependencies: ["Reporting"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "ModelFormat", "Kernels", "CFITSIO"], exclude: ["Fixtures"]),
    ],
    swiftLanguageModes: [.v5]
)
