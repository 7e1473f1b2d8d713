from setuptools import setup

setup(
    name="pcsignal",
    version="0.1.0",
    description=(
        "WebRTC peerconnection signaling server (twistd pcsignal) and "
        "headless WebRTC peer (twistd pcpeer) on Twisted and aiortc"
    ),
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=["pcsignal", "pcsignal.peer", "twisted.plugins"],
    package_data={"pcsignal": ["static/*"]},
    include_package_data=True,
    install_requires=[
        "Twisted[tls]>=24.7.0",
        "treq>=23.11.0",
        "txaio>=23.1.1",
        "aiortc>=1.9.0",
        "av>=12.0.0",
        "numpy>=1.24",
        "prometheus-client>=0.20.0",
        # pcsignal-bench, which any user may point at any server
        "aiohttp>=3.9",
        "uvloop>=0.19; sys_platform != 'win32'",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-twisted>=1.14.1",
            "cryptography>=42.0",
            "playwright>=1.45",
        ],
    },
    entry_points={
        "console_scripts": [
            "pcsignal-bench = pcsignal.bench:main",
            "pcpeer-bench = pcsignal.peer.bench:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Conferencing",
    ],
)
