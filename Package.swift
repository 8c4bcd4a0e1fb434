// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "AstroCNN",
    products: [
        .library(name: "ModelFormat", targets: ["ModelFormat"]),
        .library(name: "Kernels", targets: ["Kernels"]),
        .library(name: "Runtime", targets: ["Runtime"]),
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
        .target(name: "ModelFormat"),
        .target(name: "Kernels"),
        .target(name: "Runtime", dependencies: ["ModelFormat", "Kernels", "CFITSIO"]),
        .executableTarget(
            name: "astrocnn",
            dependencies: [
                "Runtime", "ModelFormat", "Kernels",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "ModelFormatTests", dependencies: ["ModelFormat"]),
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "RuntimeTests", dependencies: ["Runtime", "ModelFormat", "Kernels", "CFITSIO"]),
    ],
    swiftLanguageModes: [.v5]
)
