from setuptools import find_packages, setup

# What each part imports, declared where it is used (tests/test_packaging.py
# checks every import against this): `pip install pcsignal` is the server
# alone; pcpeer, the load generators, the tests and the docs are extras.
PEER = [
    "aiohttp>=3.9",
    "aiortc>=1.16.0",  # RTCConfiguration.iceTransportPolicy (--relay-only)
    "aioice>=0.12.0",
    "av>=12.0.0",
    "numpy>=1.24",
    "pyee>=11.0.0",
    "treq>=23.11.0",
    "txaio>=23.1.1",
]
BENCH = [
    "aiohttp>=3.9",
    "yarl>=1.9",
    "psutil>=5.9",
    "uvloop>=0.19; sys_platform != 'win32'",
]
# The docs' API pages import pcpeer, so the docs need the peer extra too;
# matplotlib draws the benchmark charts at build time (docs/_ext).
DOCS = PEER + ["sphinx>=7.0", "docutils>=0.18.1", "matplotlib>=3.5"]
TEST = PEER + BENCH + DOCS + [
    "pytest>=8.0",
    "pytest-twisted>=1.14.1",
    "cryptography>=42.0",
    "playwright>=1.45",
    "hypothesis>=6.0",
]

setup(
    name="pcsignal",
    version="0.2.0",
    description=(
        "WebRTC peerconnection signaling server (twistd pcsignal) and "
        "headless WebRTC peer (twistd pcpeer) on Twisted and aiortc"
    ),
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["pcsignal", "pcsignal.*"]) + ["twisted.plugins"],
    package_data={"pcsignal": ["static/*", "channel/lua/*.lua"]},
    include_package_data=True,
    install_requires=[
        "Twisted[tls]>=24.7.0",
        "pyOpenSSL>=21.0.0",
        "zope.interface>=5.0",
        "prometheus-client>=0.20.0",
        "txredisapi>=1.6.0",
        # txredisapi parses replies with it when installed, at a fraction of
        # the CPU of its own parser.
        "hiredis>=2.0",
        "autobahn>=26.10.2",
        "txaio>=23.1.1",
    ],
    extras_require={
        "peer": PEER,
        "bench": BENCH,
        "test": TEST,
        "docs": DOCS,
    },
    entry_points={
        "console_scripts": [
            "pcsignal-bench = pcsignal.bench.signaling:main",
            "pcpeer-bench = pcsignal.bench.calls:main",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Conferencing",
    ],
)
