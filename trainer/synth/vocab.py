"""The synthetic generator's vocabulary: personalities, categories, feature groups, professions, text templates."""

from __future__ import annotations

# name -> (id prefix, favourite categories)
PERSONALITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Tech Enthusiast": ("tec", ("laptop", "smartphone", "headphones", "smartwatch")),
    "Fashion Lover": ("fas", ("sneakers", "jacket", "sunglasses")),
    "Outdoor Adventurer": ("out", ("backpack", "tent", "jacket", "camera")),
    "Home Chef": ("hom", ("cookware", "coffee maker", "knife set")),
    "Fitness Fanatic": ("fit", ("smartwatch", "sneakers", "yoga mat")),
    "Book Lover": ("boo", ("novel", "e-reader", "coffee maker")),
    "Gamer": ("gam", ("laptop", "headphones", "game console")),
    "Traveler": ("tra", ("backpack", "camera", "sunglasses", "smartphone")),
}

# name -> (typical price in dollars, attributes the description names)
CATEGORIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "laptop": (
        900,
        (
            "advanced cooling system",
            "high refresh rate display",
            "AI-powered processor",
            "backlit keyboard",
            "all-day battery",
        ),
    ),
    "smartphone": (
        650,
        ("triple-lens camera", "OLED display", "5G modem", "all-day battery", "AI-powered processor"),
    ),
    "headphones": (
        180,
        (
            "active noise cancelling",
            "spatial audio",
            "40-hour battery",
            "foldable design",
            "studio-grade drivers",
        ),
    ),
    "smartwatch": (
        300,
        ("heart-rate sensor", "GPS tracking", "always-on display", "sleep tracking", "contactless payments"),
    ),
    "camera": (
        750,
        ("full-frame sensor", "4K video", "image stabilisation", "weather sealing", "fast autofocus"),
    ),
    "sneakers": (
        120,
        ("cushioned sole", "knit upper", "grippy outsole", "reflective details", "lightweight build"),
    ),
    "jacket": (
        160,
        ("insulated lining", "water-repellent shell", "adjustable hood", "zip pockets", "packable design"),
    ),
    "sunglasses": (
        140,
        (
            "polarised lenses",
            "UV400 protection",
            "titanium frame",
            "scratch-resistant coating",
            "wraparound fit",
        ),
    ),
    "backpack": (
        110,
        (
            "padded laptop sleeve",
            "hidden pockets",
            "water-resistant fabric",
            "hip belt",
            "expandable main compartment",
        ),
    ),
    "tent": (
        260,
        ("two-layer design", "aluminium poles", "quick-pitch frame", "storm guy lines", "vestibule storage"),
    ),
    "cookware": (
        190,
        (
            "non-stick coating",
            "tri-ply steel",
            "induction-ready base",
            "oven-safe handles",
            "tempered glass lids",
        ),
    ),
    "coffee maker": (
        220,
        ("built-in grinder", "programmable timer", "milk frother", "thermal carafe", "pressure pump"),
    ),
    "knife set": (
        150,
        ("forged steel blades", "full-tang handles", "hardwood block", "precision edge", "honing rod"),
    ),
    "yoga mat": (
        60,
        ("non-slip surface", "extra cushioning", "alignment lines", "carry strap", "natural rubber"),
    ),
    "novel": (
        20,
        ("gripping plot", "award-winning author", "illustrated cover", "bonus chapter", "book-club guide"),
    ),
    "e-reader": (
        140,
        (
            "glare-free screen",
            "adjustable warm light",
            "weeks-long battery",
            "waterproof body",
            "huge library access",
        ),
    ),
    "game console": (
        480,
        ("4K gaming", "ray tracing", "ultra-fast SSD", "wireless controller", "online multiplayer"),
    ),
}

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "connectivity": ("Bluetooth 5.0", "USB-C connectivity", "Wi-Fi 6", "NFC pairing"),
    "power": ("Fast charging", "Long battery life", "Energy efficient", "Solar compatible"),
    "durability": ("Waterproof", "Shock resistant", "Reinforced stitching", "Scratch-proof coating"),
    "comfort": ("Ergonomic design", "Lightweight", "Breathable fabric", "Memory foam padding"),
    "smart": ("AI assistant", "App control", "Voice control", "Expandable storage"),
    "eco": ("Recycled materials", "Plastic-free packaging", "Carbon neutral shipping", "Repairable design"),
    "premium": ("Premium materials", "Limited edition", "Handcrafted finish", "Lifetime warranty"),
}

# profession -> typical age
PROFESSIONS: dict[str, float] = {
    "science": 38,
    "engineering": 36,
    "healthcare": 41,
    "education": 43,
    "arts": 33,
    "finance": 40,
    "law": 44,
    "sales": 35,
    "hospitality": 29,
    "trades": 39,
    "student": 21,
    "retired": 68,
}

AUDIENCES = (
    "gamers",
    "remote workers",
    "students",
    "travelers",
    "professionals",
    "families",
    "athletes",
    "creators",
    "home cooks",
    "commuters",
    "beginners",
    "enthusiasts",
)
BENEFITS = ("performance", "comfort", "durability", "everyday use", "high efficiency", "style")
QUALITIES = ("top-tier functionality", "reliable results", "great value", "lasting quality")
ADJECTIVES = ("sleek", "rugged", "compact", "versatile", "premium", "budget-friendly")
TEMPLATES = (
    "Designed for {aud}, this {noun} includes {a1} and {a2}. It's built for {benefit} and {benefit2}.",
    "With {a1} and {a2}, this {noun} is built for {benefit}. Perfect for {aud}, it delivers {quality}.",
    "This {noun} features {a1} and {a2}, making it ideal for {aud} who value {benefit}.",
    "A {adj} {noun} with {a1}, {a2} and {a3}. Great for {aud} looking for {quality}.",
)
