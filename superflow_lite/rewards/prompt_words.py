"""Templates and word lists for the built-in OCR and preference prompt sets (make_prompts.py).

Written for this project. OCR scenes are surfaces that carry text in real photos and
designs; the texts are short (1-3 words, <= 24 characters) because today's models, SD3.5-M
included, render short text far more reliably than sentences (Flow-GRPO's OCR prompts
are of the same kind). Preference prompts cover subjects x settings x styles x lighting,
the range of a general aesthetic/preference benchmark.
"""
from __future__ import annotations

# {text} is replaced by the quoted target text.
OCR_TEMPLATES: tuple[str, ...] = (
    'A neon sign on a brick wall that reads "{text}"',
    'A wooden storefront sign with the words "{text}" painted in gold',
    'A chalkboard menu outside a cafe that says "{text}"',
    'A vintage travel poster with the title "{text}"',
    'A coffee mug printed with the words "{text}"',
    'A highway road sign that says "{text}"',
    'A birthday cake with "{text}" written in blue icing',
    'A paperback book cover titled "{text}"',
    'A white t-shirt with "{text}" printed across the chest',
    'A protest banner held up in a crowd, reading "{text}"',
    'A graffiti mural on a concrete wall spelling "{text}"',
    'A glowing movie theater marquee announcing "{text}"',
    'A handwritten sticky note on a laptop that says "{text}"',
    'A cardboard box stamped with the words "{text}"',
    'A street sign at an intersection reading "{text}"',
    'A vintage tin can with a label that says "{text}"',
    'A beach towel with "{text}" woven into it',
    'A magazine cover with the headline "{text}"',
    'A sailboat with "{text}" painted on its hull',
    'A pixel-art video game title screen showing "{text}"',
    'A glass door with "{text}" etched into it',
    'A baseball cap embroidered with "{text}"',
    'A cozy bookstore window with a banner that says "{text}"',
    'A hand-lettered wedding invitation reading "{text}"',
    'A wooden crate labelled "{text}" in black stencil letters',
    'A billboard above a busy highway advertising "{text}"',
    'A sandcastle next to a stick-drawn message in the sand: "{text}"',
    'A retro arcade cabinet with "{text}" on its marquee',
    'A shop receipt with "{text}" printed at the top',
    'A lighthouse with "{text}" painted on its side',
    'A kid\'s drawing on a fridge with the caption "{text}"',
    'A smartphone screen showing a notification that says "{text}"',
    'A bakery paper bag stamped "{text}"',
    'An old typewriter page that reads "{text}"',
    'A stone monument engraved with "{text}"',
    'A bright yellow taxi with "{text}" on its roof sign',
    'A wine bottle with an elegant label reading "{text}"',
    'A football stadium scoreboard displaying "{text}"',
    'A hot air balloon with "{text}" written on it',
    'A classroom whiteboard with "{text}" written in red marker',
)

# Words combined into 1-3 word texts; common words whose letters are unambiguous to read.
OCR_WORDS: tuple[str, ...] = (
    "open", "closed", "coffee", "bakery", "welcome", "home", "sale", "fresh", "bread",
    "pizza", "books", "garden", "music", "dream", "hope", "love", "peace", "happy", "hello",
    "world", "summer", "winter", "autumn", "spring", "night", "morning", "city", "river",
    "ocean", "mountain", "forest", "star", "moon", "sun", "cloud", "rain", "snow", "fire",
    "gold", "silver", "blue", "green", "red", "wild", "free", "brave", "quiet", "lucky",
    "magic", "jazz", "rock", "dance", "party", "festival", "market", "station", "hotel",
    "museum", "library", "cinema", "diner", "tacos", "noodles", "sushi", "donuts", "juice",
    "tea", "milk", "honey", "lemon", "apple", "cherry", "mango", "vanilla", "cookie",
    "robot", "rocket", "planet", "galaxy", "pixel", "code", "data", "signal", "future",
    "vintage", "classic", "royal", "grand", "little", "big", "best", "first", "last",
    "north", "south", "east", "west", "exit", "stop", "slow", "caution", "danger", "push",
    "pull", "enter", "fragile", "express", "daily", "news", "sport", "team", "club",
)

# Fixed phrases mixed in with the combinations (numbers, dates, brand-like shapes).
OCR_PHRASES: tuple[str, ...] = (
    "OPEN 24 HOURS", "NO PARKING", "EST. 1987", "SALE 50% OFF", "THANK YOU", "GOOD VIBES",
    "HAPPY BIRTHDAY", "BEST DAD EVER", "KEEP OUT", "ROUTE 66", "GAME OVER", "SOLD OUT",
    "HELLO WORLD", "TEAM 42", "ROOM 101", "PLATFORM 9", "MILE 12", "LEVEL UP", "DRINK WATER",
    "STAY CURIOUS", "MADE IN 2024", "FLIGHT 307", "TABLE FOR TWO", "BACK IN 5", "VOTE",
)

PREFERENCE_SUBJECTS: tuple[str, ...] = (
    "an old fisherman mending nets", "a red fox curled up asleep", "a lighthouse on a cliff",
    "a bowl of ramen with a soft-boiled egg", "a young dancer mid-leap", "a steam locomotive",
    "a cottage with a thatched roof", "a snow leopard on a rocky ledge", "a bustling night market",
    "an astronaut floating above the earth", "a violin resting on sheet music",
    "a hummingbird drinking from a flower", "a medieval castle on a hill", "a vintage motorcycle",
    "a girl reading under a tree", "a glass teapot with blooming tea", "a koi pond",
    "a chef plating a dessert", "a sailboat in a storm", "a robot watering plants",
    "a field of sunflowers", "a jazz band on a small stage", "an owl on a mossy branch",
    "a desert caravan of camels", "a cat sitting on a windowsill", "a bridge over a misty river",
    "a wolf howling at the moon", "a stack of pancakes with berries", "a greenhouse full of ferns",
    "an elderly couple dancing in a kitchen", "a dragon coiled around a tower",
    "a bicycle leaning against a yellow wall", "a whale breaching at sunset",
    "a street musician playing guitar", "a tiny house in the woods", "a basket of fresh bread",
    "a deer in a frosty meadow", "a futuristic city skyline", "a child flying a kite",
    "a waterfall in a jungle", "a knight in ornate armor", "a bookshop at night",
)
PREFERENCE_SETTINGS: tuple[str, ...] = (
    "", "at golden hour", "in the rain", "on a foggy morning", "under a starry sky",
    "in early spring", "in deep winter", "at dusk", "in a snowstorm", "at noon",
)
PREFERENCE_STYLES: tuple[str, ...] = (
    "a photograph", "a cinematic still", "an oil painting", "a watercolor painting",
    "a pencil sketch", "a studio photograph", "a 35mm film photo", "a digital illustration",
    "a Japanese woodblock print", "a 3D render", "a vintage postcard", "an art nouveau poster",
)
PREFERENCE_DETAILS: tuple[str, ...] = (
    "", "highly detailed", "soft light", "dramatic lighting", "shallow depth of field",
    "vibrant colors", "muted pastel palette", "wide angle", "close-up", "symmetrical composition",
)
