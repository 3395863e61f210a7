"""Builds gkd_jax/tasks/assets/instructions/: single-turn instruction prompts for prune-and-distill.

  .venv/bin/python experiments/build_instruction_prompts.py            # measures the teacher
  .venv/bin/python experiments/build_instruction_prompts.py \\
      --teacher_accuracy=gkd_jax/tasks/assets/instructions/teacher_accuracy.json   # reuses it

Writes train.jsonl (3000 records), eval.jsonl (300), teacher_accuracy.json and README.md. Every
record is a chat record {"messages": [{"role": "user", "content": PROMPT}], "kind": KIND, "topic":
..., "heldout_topic": bool}, plus "answer" (and "options" for choices) in the checkable slice.

How the set is built (deterministic in --seed; everything below is written in this file):

1. Open-ended prompts (85% of each split): 17 task types (explain, describe, one-sentence summary,
   poem, haiku, fun fact, tips, how-to, pros and cons, compare, list examples, define a word, short
   email, story opening, name ideas, rewrite a sentence, why-question), each a few phrasings x a
   topic list (274 subjects in 14 categories, plus 446 activities, choices, pairs, categories,
   words, situations, story premises, ...: 720 topics). Every combination is enumerated; each task
   type gets an equal share of the split (less where it has fewer combinations, the rest going
   to the others).
2. Held-out topics: 12% of the values of every topic list never appear in train. Half of eval's
   open-ended prompts use those held-out topics ("heldout_topic": true); the other half use train
   topics in prompts that are not in train. No prompt is in both splits.
3. Checkable prompts (15% of each split): question kinds whose answer is checked without the
   teacher (gkd_jax/tasks/instructions.py): arithmetic, unit conversions, lookups (capitals,
   opposites, plurals, legs, colours, days, months, ...). Each kind is a list of facts x a few
   phrasings; 20% of a kind's facts (at least one) are eval-only, so eval asks facts train never
   asks. (Where the kept kinds hold fewer prompts than 15%, open-ended ones fill the split.)
4. The teacher (SmolLM2-135M-Instruct, the cached GGUF, greedy, 48 new tokens, through its own chat
   template) answers a pool of 40 prompts per candidate kind (fewer where the kind has fewer),
   drawn from all of the kind's prompts; only kinds it gets right >= 70% of the time (by the
   bundled checker) go into the set. The table of every kind, kept or rejected, is
   teacher_accuracy.json and the README. --completions=FILE keeps the teacher's completions, so
   a changed checker is re-measured without running the teacher again.

As measured (seed 0, ~13 minutes on 2 CPU cores, nearly all of it the teacher): 7 of 50 candidate
kinds pass, all lookups (language, country of a city, continent, chemical symbol, plural, capital,
currency); every arithmetic and unit-conversion kind fails (0.00-0.50).

Prompts are single lines of at most 40 tokens (checked with the teacher's tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import Callable, Optional, Sequence

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from gkd_jax.tasks import instructions  # noqa: E402

OUT = os.path.join(ROOT, "gkd_jax", "tasks", "assets", "instructions")
THRESHOLD = 0.7  # a checkable kind is kept when the teacher gets at least this fraction right
MAX_PROMPT_TOKENS = 40


def _items(text: str, sep: str = ";") -> list[str]:
  """The non-empty, stripped entries of a `sep`-separated block of text."""
  return [" ".join(s.split()) for s in text.split(sep) if s.strip()]


def _pairs(text: str, sep: str = "=") -> list[tuple[str, str]]:
  """ "a=b; c=d" -> [("a", "b"), ("c", "d")]."""
  return [tuple(s.strip() for s in item.split(sep)) for item in _items(text)]


# ------------------------------------------------------------------------------- open-ended topics

# Concepts (explain, one-sentence, poem, haiku, fun fact) and things (describe, one-sentence, poem,
# haiku, fun fact), by category.
CONCEPTS = {
    "science": """photosynthesis; gravity; the water cycle; evolution; DNA; atoms; electricity;
      magnetism; friction; sound waves; the greenhouse effect; erosion; plate tectonics; chemical
      reactions; the immune system; vaccines; static electricity; buoyancy; the speed of light;
      the phases of the moon; tides; solar eclipses; climate change; renewable energy; the food
      chain; pollination; hibernation; bird migration; cells; viruses; condensation; evaporation""",
    "technology": """the internet; artificial intelligence; machine learning; cloud computing;
      encryption; GPS; Wi-Fi; computer viruses; 3D printing; search engines; social media; email;
      computer programming; open-source software; virtual reality; two-factor authentication;
      password managers; online maps; video calls; spam filters; QR codes; touch screens""",
    "work and money": """inflation; interest rates; a household budget; compound interest; supply
      and demand; taxes; a credit score; insurance; remote work; teamwork; time management;
      leadership; networking; a startup; customer service; marketing; negotiation; a job interview;
      a pension; a small business""",
    "health": """sleep; exercise; a balanced diet; hydration; stretching; meditation; stress;
      vitamins; first aid; hand washing; good posture; mindfulness; a healthy breakfast; daily
      walks; sun protection""",
    "history": """the Roman Empire; ancient Egypt; the Renaissance; the printing press; the
      Industrial Revolution; the Silk Road; the invention of the wheel; the ancient Olympic Games;
      the first moon landing; the Vikings; medieval castles; the invention of writing; the steam
      engine; ancient Greece; the Stone Age; the invention of the telephone""",
    "arts": """jazz; classical music; impressionist painting; poetry; photography; origami;
      ballet; theater; sculpture; street art; pottery; knitting; calligraphy; comic books; opera;
      folk tales; film making""",
    "sports": """soccer; basketball; tennis; swimming; chess; marathon running; yoga; cycling;
      rock climbing; skiing; surfing; the Olympic Games; baseball; cricket; table tennis; martial
      arts; skateboarding""",
    "everyday life": """friendship; kindness; gratitude; a morning routine; recycling; laundry day;
      grocery shopping; public transport; moving house; good neighbors; weekends; gardening;
      cooking at home; a to-do list; a rainy afternoon; the first day of school; family dinners""",
}
THINGS = {
    "nature": """a thunderstorm; fresh snow; morning fog; autumn leaves; a sunrise; the ocean; a
      river; a mountain; a forest; a desert; a volcano; an earthquake; a hurricane; a coral reef;
      wildflowers; clouds; the wind; the night sky; the moon; spring; winter; a waterfall; a cave;
      a glacier; a meadow""",
    "animals": """elephants; dolphins; owls; honeybees; penguins; cats; dogs; octopuses;
      butterflies; wolves; sea turtles; hummingbirds; ants; whales; horses; foxes; parrots; frogs;
      bats; koalas; giraffes; cheetahs; squirrels; jellyfish; eagles""",
    "food": """bread; sourdough; pizza; sushi; coffee; tea; chocolate; pasta; rice; soup; curry; a
      green salad; pancakes; cheese; honey; olive oil; spices; lemons; apples; tomatoes; avocados;
      dumplings; ice cream; tacos; a picnic lunch""",
    "places": """Paris; Tokyo; New York City; the Sahara Desert; the Amazon rainforest; Venice; the
      Alps; Iceland; a small fishing village; a busy train station; an airport; a public library;
      a farmers market; a museum; a lighthouse; a city park; a mountain cabin; a beach at sunset;
      an old castle; a night market; a subway station; a campsite""",
    "travel": """backpacking; a road trip; jet lag; packing a suitcase; a long train journey; a
      hotel breakfast; a guided tour; a travel journal; a passport; a ferry crossing""",
    "space": """the solar system; Mars; the sun; the Milky Way; astronauts; satellites; comets; the
      International Space Station; telescopes; the rings of Saturn; meteor showers""",
}
ACTIVITIES = """staying focused while studying; saving money on groceries; sleeping better;
  learning a new language; keeping a houseplant alive; running a first 5K; making friends in a new
  city; cooking for one person; staying calm before an exam; writing a good cover letter; packing
  light for a trip; keeping a kitchen clean; reducing screen time; starting a vegetable garden;
  taking better photos with a phone; public speaking; drinking more water; keeping a journal;
  learning to play the guitar; working from home; traveling on a budget; staying safe online;
  training a puppy; reading more books; waking up early; organizing a closet; preparing for a job
  interview; managing stress at work; walking more every day; making a long flight comfortable;
  being a good listener; remembering names; running a good meeting; studying for a math test;
  keeping kids busy on a rainy day; eating less sugar; staying warm in winter; staying cool in
  summer; hosting a dinner party; choosing a strong password; writing clear emails; saving energy
  at home; reducing food waste; planning a birthday party; staying motivated to exercise; keeping
  a desk tidy; caring for a new kitten; camping for the first time; driving in the rain; giving a
  good presentation; baking soft cookies; learning to draw; keeping a bike in good shape"""
HOWTO = """boil an egg; make a cup of tea; fix a flat bicycle tire; plant a tree; tie a tie; make a
  paper airplane; write a thank-you note; clean a laptop keyboard; brew coffee with a French press;
  make pancakes; fold a fitted sheet; sew on a button; wash a wool sweater; repot a plant; take a
  screenshot on a computer; make a fruit smoothie; polish leather shoes; back up the photos on a
  phone; start a campfire safely; make a grocery list; iron a shirt; make lemonade; clean a window
  without streaks; measure a room for a carpet; hang a picture on a wall; cook pasta; make a bed
  neatly; wrap a present; care for a cast iron pan; make scrambled eggs; check the tire pressure
  of a car; make a simple salad dressing; build a birdhouse; plan meals for a week; make a paper
  boat; read a paper map; set up a fish tank; make a budget spreadsheet; learn to juggle; make
  homemade pizza dough; clean a bathroom quickly; pack a lunch box"""
CHOICES = """working from home; living in a big city; owning a car; electric cars; renting an
  apartment; social media; online shopping; homeschooling; a four-day work week; public transport;
  having a pet dog; learning online; traveling alone; solar panels at home; eating out often;
  using a credit card; a standing desk; e-books; living in the countryside; a gap year; working at
  a startup; team sports for children; video games; smart speakers; paying with cash; fast food;
  air travel; camping holidays; school uniforms; self-checkout machines; wearing a smartwatch;
  freelancing; nuclear power; a vegetarian diet; tiny houses; cruise holidays; open-plan offices;
  streaming services; cooking meals in advance; living with roommates"""
PAIRS = """cats / dogs; tea / coffee; a city / a village; summer / winter; books / movies; trains /
  planes; a laptop / a tablet; weather / climate; viruses / bacteria; alligators / crocodiles;
  frogs / toads; rabbits / hares; butter / margarine; baking / frying; running / swimming; soccer /
  basketball; chess / checkers; the piano / the guitar; jazz / rock music; painting / photography;
  emails / text messages; renting / buying a home; saving / investing; a debit card / a credit
  card; the sun / the moon; a planet / a star; an ocean / a lake; a hill / a mountain; a hurricane
  / a tornado; rain / snow; a comet / an asteroid; a bicycle / a scooter; a bus / a train; a hotel
  / a hostel; a museum / a zoo; fruits / vegetables; bread / rice; green tea / black tea; cake /
  pie; wool / cotton; an email / a handwritten letter; a poem / a song; ancient Rome / ancient
  Greece; a king / a president; walking / cycling; a diary / a blog; the violin / the cello; a
  hobby / a job; lions / tigers; bees / wasps; dolphins / sharks; a river / a canal"""
CATEGORIES = """red fruits; musical instruments; animals that live in the ocean; board games;
  vegetables that grow underground; famous rivers; countries in Europe; things you can recycle;
  hobbies you can do at home; healthy snacks; sports played with a ball; birds that cannot fly;
  jobs in a hospital; things to pack for a beach day; kitchen tools; renewable energy sources;
  ways to say thank you; indoor plants; breakfast foods; insects; types of clouds; programming
  languages; famous painters; careers in science; winter sports; dog breeds; cheeses; spices;
  outdoor activities for a weekend; fun things to do on a rainy day; kinds of trees; desserts; farm
  animals; tools in a toolbox; ways to save water; things found in a classroom; nocturnal animals;
  gemstones; kinds of transportation; herbs used in cooking; string instruments; ancient
  civilizations; things that are cold; wild cats; card games"""
WORDS = """ephemeral; resilient; curious; nostalgia; empathy; generous; meticulous; ambiguous;
  serendipity; frugal; diligent; candid; vivid; tranquil; optimistic; humble; persistent;
  versatile; obsolete; brisk; cozy; eloquent; hesitant; whimsical; sturdy; fragile; abundant;
  sincere; reluctant; clumsy; patient; wander; ponder; flourish; cherish; negotiate; habitat;
  deadline; harvest; journey; puzzle; shadow; echo; horizon; volunteer; recipe; orbit; fossil;
  canyon; festival; anthem; compass; lantern; curfew; drizzle; glimpse; mellow; quaint; sly;
  thrive"""
SITUATIONS = """to your manager asking for a day off next Friday; to a friend inviting them to
  your birthday party; to a colleague thanking them for their help; to your landlord about a
  broken heater; to a teacher asking about tomorrow's homework; to a neighbor about a package left
  at your door; to a customer apologizing for a late delivery; to your team about a meeting on
  Monday; to a hotel asking about late check-in; to an old friend you have not seen in years; to a
  coworker asking to swap shifts; to a restaurant booking a table for four; to a clinic asking to
  move an appointment; to a new client introducing yourself; to a classmate asking to borrow
  notes; to your family about holiday plans; to a shop asking for a refund; to a professor asking
  for a reference letter; to a local charity offering to volunteer; to your team celebrating a
  finished project; to a plumber asking for a price estimate; to your gym canceling a membership;
  to a friend congratulating them on a new job; to your boss asking to work from home; to a
  library asking to renew a book; to a neighbor inviting them to a street party; to parents about
  a change in soccer practice times; to a new coworker welcoming them to the team; to a tour
  company asking about group prices; to a friend saying sorry for missing their call"""
PREMISES = """a lighthouse keeper who finds a message in a bottle; a robot learning to paint; a
  girl who can talk to birds; a lost dog finding its way home; a detective in a small town; a
  dragon who is afraid of fire; two friends on a road trip; a mysterious door in a library; a
  baker whose bread is magic; the last tree in a big city; an astronaut alone on Mars; a boy who
  finds an old map; a cat who runs a bookstore; a storm on a small island; a time traveler stuck
  in the past; a village where it never stops snowing; a shy musician's first concert; a secret
  garden behind a school; a ghost who wants to make friends; a kid inventor and a broken robot; a
  fisherman and a talking fish; a new student on the first day of school; a train that never
  stops; a grandmother's old recipe book; a penguin who wants to fly; a city under the sea; a
  letter that arrives fifty years late; an old clock that can stop time; a chef cooking for a
  king; a hiker lost in the fog; a family moving to a farm; a toy left behind at the beach; a
  painter who loses her colors; a mail carrier on a windy day; the first snow of the year; a
  market that opens only at midnight; a squirrel planning a winter feast; two rival bakers; a
  musician who hears colors; a boat with no captain"""
NAMEABLES = """a new bakery; a pet goldfish; a coffee shop; a hiking club; a friendly robot; a
  school newsletter; a family cat; a podcast about cooking; a rock band; a board game about space; a
  community garden; a small sailboat; a used bookshop; a yoga studio; a fantasy kingdom; a food
  truck; a youth soccer team; a seaside hotel; a travel blog; a new puppy; a reading club; a
  lemonade stand; a science fair project; a bicycle repair shop"""
SENTENCES = """I can't come to the meeting tomorrow.; The food was bad and the service was slow.;
  Send me the report now.; We will be late because of traffic.; This phone costs too much.; Your
  package will arrive soon.; I don't understand the instructions.; The park is closed today
  because of the storm.; Please clean up your room.; The meeting has moved to Thursday.; I lost
  my keys again.; We need more time to finish the project.; The movie was long and boring.;
  Thanks for the gift, I liked it.; The store has no bread left.; Can you help me move on
  Saturday?; The train was cancelled.; I think your idea is wrong.; Dinner is ready.; The
  printer is broken again.; You forgot to reply to my email.; It is too cold to go outside."""
STYLES = ("more formal", "more friendly", "simpler", "more polite", "more exciting")
WHY = """Why is the sky blue?; Why do leaves change color in autumn?; Why do we dream?; Why does
  bread rise?; Why do cats purr?; Why is the ocean salty?; Why do we get hiccups?; Why do onions
  make us cry?; Why do birds migrate?; Why does ice float?; Why do stars twinkle?; Why do we need
  sleep?; Why do people yawn?; Why is exercise good for you?; Why do boats float?; Why do we have
  seasons?; Why does the moon change shape?; Why do bees make honey?; Why is recycling
  important?; Why do zebras have stripes?; Why do fingers wrinkle in water?; Why does popcorn
  pop?; Why do volcanoes erupt?; Why do we have time zones?; Why do plants need sunlight?; Why
  does metal feel cold?; Why do dogs wag their tails?; Why do we sneeze?; Why is reading good for
  children?; Why do apples turn brown after cutting?; Why do birds sing in the morning?; Why does
  thunder follow lightning?; Why do we save money?; Why do people learn history?; Why do we
  have fingerprints?; Why does the wind blow?; Why do cats land on their feet?; Why do we
  celebrate birthdays?"""

# Task type -> (the topic lists it draws from, its phrasings). {x} is the topic ({y} the second
# of a pair), {n} a count (3, 4 or 5), {style} a rewriting style.
TASK_TYPES = {
    "explain": (
        ("concepts",),
        (
            "Explain {x} in simple terms.",
            "Explain {x} to a ten-year-old.",
            "Can you briefly explain {x}?",
            "What is the basic idea behind {x}?",
        ),
    ),
    "describe": (
        ("things",),
        (
            "Describe {x} in a few sentences.",
            "Describe {x} to someone who has never seen it.",
            "Write a short description of {x}.",
        ),
    ),
    "one_sentence": (
        ("concepts", "things"),
        (
            "In one sentence, tell me about {x}.",
            "Sum up {x} in one sentence.",
            "Describe {x} in one line.",
        ),
    ),
    "poem": (
        ("concepts", "things"),
        (
            "Write a short poem about {x}.",
            "Write a four-line poem about {x}.",
            "Write a rhyming couplet about {x}.",
        ),
    ),
    "haiku": (("concepts", "things"), ("Write a haiku about {x}.", "Compose a haiku about {x}.")),
    "fun_fact": (
        ("concepts", "things"),
        ("Tell me an interesting fact about {x}.", "Share a fun fact about {x}."),
    ),
    "tips": (
        ("activities",),
        (
            "Give {n} tips for {x}.",
            "What are {n} good tips for {x}?",
            "Share {n} practical tips for {x}.",
            "List {n} simple tips for {x}.",
        ),
    ),
    "howto": (
        ("howto",),
        (
            "How do I {x}?",
            "What are the steps to {x}?",
            "Explain how to {x}, step by step.",
            "Give simple steps to {x}.",
        ),
    ),
    "pros_cons": (
        ("choices",),
        (
            "What are the pros and cons of {x}?",
            "List the advantages and disadvantages of {x}.",
            "Give two pros and two cons of {x}.",
        ),
    ),
    "compare": (
        ("pairs",),
        (
            "Compare {x} and {y}.",
            "What is the difference between {x} and {y}?",
            "How are {x} and {y} alike, and how are they different?",
        ),
    ),
    "list_examples": (
        ("categories",),
        ("List {n} examples of {x}.", "Name {n} {x}.", "Give me {n} {x}."),
    ),
    "define": (
        ("words",),
        (
            "Define the word '{x}'.",
            "What does '{x}' mean?",
            "What does the word '{x}' mean? Give an example sentence.",
            "Explain the meaning of '{x}' simply.",
        ),
    ),
    "email": (
        ("situations",),
        (
            "Write a short email {x}.",
            "Write a brief, friendly message {x}.",
            "Draft a polite email {x}.",
            "Write a text message {x}.",
        ),
    ),
    "story": (
        ("premises",),
        (
            "Write the opening of a short story about {x}.",
            "Write the first two sentences of a story about {x}.",
            "Begin a short story about {x}.",
            "Start a bedtime story about {x}.",
        ),
    ),
    "names": (
        ("nameables",),
        (
            "Suggest {n} names for {x}.",
            "Give me {n} name ideas for {x}.",
            "What are {n} good names for {x}?",
        ),
    ),
    "rewrite": (
        ("sentences",),
        ('Rewrite this sentence to sound {style}: "{x}"', 'Make this sentence {style}: "{x}"'),
    ),
    "why": (("why",), ("{x}", "{x} Answer in two sentences.", "{x} Explain it to a child.")),
}


def topic_lists() -> dict[str, list[tuple[str, str]]]:
  """Topic list name -> [(topic, category)]."""
  out = {
      "concepts": [(t, cat) for cat, text in CONCEPTS.items() for t in _items(text)],
      "things": [(t, cat) for cat, text in THINGS.items() for t in _items(text)],
      "pairs": [(t, "pairs") for t in _items(PAIRS)],
  }
  for name, text in (
      ("activities", ACTIVITIES),
      ("howto", HOWTO),
      ("choices", CHOICES),
      ("categories", CATEGORIES),
      ("words", WORDS),
      ("situations", SITUATIONS),
      ("premises", PREMISES),
      ("nameables", NAMEABLES),
      ("why", WHY),
  ):
    out[name] = [(t, name) for t in _items(text)]
  out["sentences"] = [(t, "sentences") for t in _items(SENTENCES)]
  return out


def _fill(template: str, topic: str) -> list[str]:
  """Every prompt of one phrasing and topic (over counts and styles where it has them)."""
  x, _, y = topic.partition(" / ")
  counts = (3, 4, 5) if "{n}" in template else (None,)
  styles = STYLES if "{style}" in template else (None,)
  return [template.format(x=x, y=y, n=n, style=s) for n in counts for s in styles]


def open_combinations(topics: dict, heldout: set) -> dict[str, dict[bool, list[dict]]]:
  """task type -> {held-out topic?: [records]}: every open-ended prompt, in a fixed order."""
  out = {}
  for kind, (lists, templates) in TASK_TYPES.items():
    groups = {False: [], True: []}
    for name in lists:
      for topic, _ in topics[name]:
        for template in templates:
          for prompt in _fill(template, topic):
            held = (name, topic) in heldout
            groups[held].append(_record(prompt, kind, topic, held))
    out[kind] = groups
  return out


def heldout_topics(topics: dict, seed: int, fraction: float) -> set[tuple[str, str]]:
  """(list name, topic) pairs kept out of train: `fraction` of each list (per category for the
  subject lists), chosen by a seeded shuffle."""
  out = set()
  for name, entries in sorted(topics.items()):
    by_category = {}
    for topic, category in entries:
      by_category.setdefault(category, []).append(topic)
    for category, values in sorted(by_category.items()):
      rng = random.Random(f"{seed}:heldout:{name}:{category}")
      shuffled = sorted(values)
      rng.shuffle(shuffled)
      out |= {(name, t) for t in shuffled[: max(1, round(fraction * len(values)))]}
  return out


# ------------------------------------------------------------------------------- checkable kinds

CAPITALS = """France=Paris; Germany=Berlin; Italy=Rome; Spain=Madrid; Japan=Tokyo; China=Beijing;
  Russia=Moscow; the United Kingdom=London; Egypt=Cairo; Canada=Ottawa; Greece=Athens;
  Portugal=Lisbon; Ireland=Dublin; Norway=Oslo; Sweden=Stockholm; Finland=Helsinki;
  Denmark=Copenhagen; Poland=Warsaw; Austria=Vienna; Hungary=Budapest; the Czech Republic=Prague;
  Belgium=Brussels; Argentina=Buenos Aires; Peru=Lima; Kenya=Nairobi; Thailand=Bangkok; South
  Korea=Seoul; Indonesia=Jakarta; the Philippines=Manila; Vietnam=Hanoi; Iran=Tehran;
  Iraq=Baghdad; Saudi Arabia=Riyadh; Turkey=Ankara; India=New Delhi; Australia=Canberra;
  Cuba=Havana; Iceland=Reykjavik; Nigeria=Abuja; Morocco=Rabat; New Zealand=Wellington;
  Colombia=Bogota"""
OPPOSITES = """hot=cold; cold=hot; tall=short; big=small; small=big; fast=slow; slow=fast;
  happy=sad; sad=happy; up=down; down=up; open=closed; full=empty; empty=full; early=late;
  late=early; hard=soft; soft=hard; wet=dry; dry=wet; rich=poor; poor=rich; strong=weak;
  weak=strong; loud=quiet; clean=dirty; dirty=clean; thick=thin; wide=narrow; narrow=wide;
  inside=outside; outside=inside; push=pull; pull=push; buy=sell; sell=buy; win=lose; love=hate;
  day=night; night=day; north=south; south=north; east=west; west=east; left=right; first=last;
  last=first; true=false; false=true; top=bottom; bottom=top; always=never; never=always;
  remember=forget; forget=remember; friend=enemy; cheap=expensive; expensive=cheap;
  safe=dangerous; dangerous=safe; asleep=awake; awake=asleep; brother=sister; sister=brother"""
PLURALS = """cat=cats; dog=dogs; box=boxes; city=cities; baby=babies; leaf=leaves; knife=knives;
  wolf=wolves; child=children; mouse=mice; tooth=teeth; foot=feet; goose=geese; man=men;
  woman=women; person=people; potato=potatoes; tomato=tomatoes; hero=heroes; bus=buses;
  church=churches; dish=dishes; glass=glasses; party=parties; story=stories; lady=ladies;
  wife=wives; life=lives; half=halves; shelf=shelves; loaf=loaves; berry=berries; key=keys;
  toy=toys; watch=watches; fox=foxes; class=classes; brush=brushes; book=books; tree=trees;
  apple=apples; house=houses"""
LEGS = """a dog=4; a cat=4; a horse=4; a cow=4; an elephant=4; a lion=4; a tiger=4; a zebra=4; a
  giraffe=4; a bear=4; a rabbit=4; a pig=4; a sheep=4; a goat=4; a mouse=4; a chicken=2; a duck=2;
  an ostrich=2; a penguin=2; an owl=2; an eagle=2; a parrot=2; a person=2; an ant=6; a bee=6; a
  butterfly=6; a beetle=6; a ladybug=6; a grasshopper=6; an insect=6; a spider=8; a scorpion=8"""
COLORS = """a banana=yellow; grass=green; the sky on a clear day=blue; fresh snow=white; coal=black;
  a ripe tomato=red; a lemon=yellow; a carrot=orange; a strawberry=red; milk=white; a lime=green;
  chocolate=brown; a pumpkin=orange; a crow=black; a polar bear=white; a fire truck=red; a school
  bus=yellow; table salt=white; an eggplant=purple; a flamingo=pink; a ripe cherry=red; a
  cucumber=green; a blueberry=blue; a lettuce leaf=green; a raven=black; cotton=white; a stop
  sign=red; an emerald=green; a sapphire=blue; a ruby=red; a swan=white; tar=black; a tree
  trunk=brown; a sunflower=yellow; a canary=yellow; a ladybug=red"""
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = (
    "January February March April May June July August September October November December".split()
)
ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()
)
MONTH_DAYS = dict(zip(MONTHS, (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)))
LANGUAGES = """France=French; Germany=German; Spain=Spanish; Italy=Italian; Japan=Japanese;
  Portugal=Portuguese; Brazil=Portuguese; Mexico=Spanish; Argentina=Spanish; Russia=Russian;
  Greece=Greek; Turkey=Turkish; the Netherlands=Dutch; Sweden=Swedish; Poland=Polish; South
  Korea=Korean; Thailand=Thai; Vietnam=Vietnamese; Egypt=Arabic; Saudi Arabia=Arabic;
  Israel=Hebrew; Finland=Finnish; Norway=Norwegian; Denmark=Danish; Colombia=Spanish;
  Peru=Spanish; Chile=Spanish; Austria=German; Hungary=Hungarian; Ukraine=Ukrainian;
  England=English; Australia=English"""
CONTINENTS = """Kenya=Africa; Egypt=Africa; Nigeria=Africa; Morocco=Africa; Ethiopia=Africa;
  Ghana=Africa; Uganda=Africa; France=Europe; Germany=Europe; Italy=Europe; Spain=Europe;
  Poland=Europe; Sweden=Europe; Greece=Europe; Norway=Europe; Portugal=Europe; Ireland=Europe;
  Japan=Asia; China=Asia; India=Asia; Thailand=Asia; Vietnam=Asia; Mongolia=Asia; Nepal=Asia;
  Indonesia=Asia; Brazil=South America; Argentina=South America; Peru=South America;
  Chile=South America; Colombia=South America; Venezuela=South America; Bolivia=South America;
  Canada=North America; Mexico=North America; the United States=North America"""
PAST_TENSES = """go=went; eat=ate; run=ran; see=saw; take=took; write=wrote; swim=swam; sing=sang;
  drink=drank; begin=began; fly=flew; drive=drove; give=gave; come=came; speak=spoke; break=broke;
  choose=chose; buy=bought; think=thought; teach=taught; catch=caught; bring=brought;
  sleep=slept; keep=kept; feel=felt; meet=met; sit=sat; stand=stood; tell=told; sell=sold;
  find=found; make=made; know=knew; grow=grew; throw=threw; draw=drew; wear=wore; walk=walked;
  jump=jumped; play=played; cook=cooked; talk=talked"""
BABIES = """cat=kitten; dog=puppy; cow=calf; sheep=lamb; horse=foal; duck=duckling; frog=tadpole;
  bear=cub; lion=cub; kangaroo=joey; swan=cygnet; owl=owlet; pig=piglet; deer=fawn;
  goose=gosling; hen=chick; eagle=eaglet; seal=pup; elephant=calf; tiger=cub"""
SHAPES = """triangle=3; square=4; rectangle=4; pentagon=5; hexagon=6; heptagon=7; octagon=8;
  nonagon=9; decagon=10"""
SYMBOLS = """gold=Au; silver=Ag; iron=Fe; sodium=Na; copper=Cu; zinc=Zn; neon=Ne; calcium=Ca;
  magnesium=Mg; lead=Pb; mercury=Hg; tin=Sn; chlorine=Cl; lithium=Li; silicon=Si; nickel=Ni;
  platinum=Pt; aluminum=Al; argon=Ar; titanium=Ti"""
COMPARATIVES = """big=bigger; small=smaller; tall=taller; fast=faster; good=better; bad=worse;
  happy=happier; easy=easier; hot=hotter; cold=colder; old=older; young=younger; long=longer;
  short=shorter; strong=stronger; large=larger; busy=busier; funny=funnier; heavy=heavier;
  thin=thinner; wet=wetter; sad=sadder; nice=nicer; safe=safer; brave=braver; early=earlier;
  warm=warmer; dark=darker; bright=brighter; quiet=quieter; loud=louder; clean=cleaner;
  rich=richer; deep=deeper; wide=wider; slow=slower"""
FEMALES = """king=queen; actor=actress; prince=princess; uncle=aunt; husband=wife; nephew=niece;
  lion=lioness; son=daughter; waiter=waitress; duke=duchess; emperor=empress; rooster=hen;
  grandfather=grandmother; father=mother; brother=sister; boy=girl; man=woman; gentleman=lady;
  bull=cow; stallion=mare; host=hostess; god=goddess; hero=heroine; monk=nun; wizard=witch;
  groom=bride"""
NATIONALITIES = """France=French; Germany=German; Italy=Italian; Japan=Japanese; China=Chinese;
  Mexico=Mexican; Canada=Canadian; Brazil=Brazilian; Egypt=Egyptian; Greece=Greek; India=Indian;
  Russia=Russian; Sweden=Swedish; Norway=Norwegian; Kenya=Kenyan; Australia=Australian;
  Ireland=Irish; Poland=Polish; Turkey=Turkish; Portugal=Portuguese; Peru=Peruvian;
  Chile=Chilean; Thailand=Thai; Vietnam=Vietnamese; Switzerland=Swiss; the Netherlands=Dutch;
  Denmark=Danish; Finland=Finnish; Hungary=Hungarian; Nigeria=Nigerian"""
CITIES = """Paris=France; Tokyo=Japan; Rome=Italy; Berlin=Germany; Madrid=Spain; Cairo=Egypt;
  Moscow=Russia; Sydney=Australia; Toronto=Canada; Mumbai=India; Rio de Janeiro=Brazil;
  Istanbul=Turkey; Barcelona=Spain; Venice=Italy; Munich=Germany; Kyoto=Japan; Lisbon=Portugal;
  Athens=Greece; Dublin=Ireland; Vienna=Austria; Stockholm=Sweden; Oslo=Norway; Beijing=China;
  Shanghai=China; Bangkok=Thailand; Nairobi=Kenya; Lima=Peru; Buenos Aires=Argentina;
  Marseille=France; Milan=Italy; Osaka=Japan; Warsaw=Poland; Edinburgh=Scotland;
  Manchester=England; Havana=Cuba; Hanoi=Vietnam; Montreal=Canada; Melbourne=Australia"""
CURRENCIES = """Japan=yen; the United Kingdom=pound; India=rupee; Mexico=peso; Russia=ruble;
  China=yuan; Switzerland=franc; Germany=euro; France=euro; Italy=euro; Spain=euro; the United
  States=dollar; Canada=dollar; Australia=dollar; South Africa=rand; Turkey=lira; Egypt=pound;
  Thailand=baht; Poland=zloty; Israel=shekel; Argentina=peso; Saudi Arabia=riyal; Nigeria=naira;
  Kenya=shilling; Indonesia=rupiah; Greece=euro; Portugal=euro"""
AUTHORS = """Romeo and Juliet=Shakespeare; Pride and Prejudice=Austen; Harry Potter=Rowling;
  Moby-Dick=Melville; War and Peace=Tolstoy; The Odyssey=Homer; Hamlet=Shakespeare;
  Macbeth=Shakespeare; Don Quixote=Cervantes; Oliver Twist=Dickens; A Christmas Carol=Dickens;
  Frankenstein=Shelley; Dracula=Stoker; The Hobbit=Tolkien; The Lord of the Rings=Tolkien; The
  Adventures of Tom Sawyer=Twain; Alice's Adventures in Wonderland=Carroll; The Old Man and the
  Sea=Hemingway; Animal Farm=Orwell; The Great Gatsby=Fitzgerald; Jane Eyre=Bronte; Les
  Miserables=Hugo; Treasure Island=Stevenson; The Jungle Book=Kipling; Charlie and the Chocolate
  Factory=Dahl; Robinson Crusoe=Defoe; Gulliver's Travels=Swift; Peter Pan=Barrie; The
  Iliad=Homer; Matilda=Dahl"""
NUMBER_NAMES = dict(
    zip(
        range(2, 21),
        "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split(),
    )
) | {30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty"}
SIZES = (  # smallest to largest, within each list
    "an ant; a mouse; a cat; a dog; a horse; an elephant; a whale",
    "a grain of sand; a marble; a tennis ball; a football; a car; a house; a mountain",
    "a bee; a sparrow; a chicken; a sheep; a cow; a giraffe",
)
UNITS = {  # kind -> (factor, (smaller unit, larger unit) plural names, largest n)
    "unit_m_to_cm": (100, ("centimeters", "meters"), 20),
    "unit_cm_to_mm": (10, ("millimeters", "centimeters"), 20),
    "unit_km_to_m": (1000, ("meters", "kilometers"), 12),
    "unit_kg_to_g": (1000, ("grams", "kilograms"), 12),
    "unit_l_to_ml": (1000, ("milliliters", "liters"), 12),
    "unit_hours_to_minutes": (60, ("minutes", "hours"), 12),
    "unit_minutes_to_seconds": (60, ("seconds", "minutes"), 12),
    "unit_days_to_hours": (24, ("hours", "days"), 10),
    "unit_weeks_to_days": (7, ("days", "weeks"), 12),
    "unit_years_to_months": (12, ("months", "years"), 12),
}
UNIT_PHRASINGS = (
    "How many {small} are in {n} {large}? | Convert {n} {large} to {small}."
    " | {n} {large} is how many {small}?"
)


def _superlative(comparative: str) -> str:
  """ "bigger" -> "biggest", "better" -> "best", "worse" -> "worst"."""
  return {"better": "best", "worse": "worst"}.get(comparative, comparative[:-1] + "st")


# Lookup kinds: kind -> (the facts "x=answer", the phrasings "a | b | ..." with {x} the subject).
LOOKUPS = {
    "capital": (
        CAPITALS,
        (
            "What is the capital of {x}? | Name the capital city of {x}."
            " | Which city is the capital of {x}?"
        ),
    ),
    "opposite": (
        OPPOSITES,
        (
            "What is the opposite of {x}? | What is the opposite of the word '{x}'?"
            " | Give the opposite of {x}."
        ),
    ),
    "plural": (
        PLURALS,
        (
            "What is the plural of {x}? | What is the plural of the word '{x}'?"
            " | Write the plural form of {x}."
        ),
    ),
    "animal_legs": (LEGS, "How many legs does {x} have? | How many legs has {x} got?"),
    "color_of": (COLORS, "What color is {x}? | What is the usual color of {x}?"),
    "month_ordinal": (
        ";".join(f"{o}={m}" for o, m in zip(ORDINALS, MONTHS)),
        "What is the {x} month of the year? | Which month is the {x} month of the year?",
    ),
    "days_in_month": (
        ";".join(f"{m}={d}" for m, d in MONTH_DAYS.items() if m != "February"),
        "How many days are in {x}? | How many days does {x} have?",
    ),
    "language": (
        LANGUAGES,
        (
            "What language is spoken in {x}? | What is the main language of {x}?"
            " | What language do people in {x} speak?"
        ),
    ),
    "continent": (CONTINENTS, "On which continent is {x}? | Which continent is {x} in?"),
    "past_tense": (
        PAST_TENSES,
        "What is the past tense of {x}? | What is the past tense of the verb '{x}'?",
    ),
    "animal_baby": (BABIES, "What is a baby {x} called? | What do you call a young {x}?"),
    "shape_sides": (
        SHAPES,
        (
            "How many sides does a {x} have? | How many sides are there on a {x}?"
            " | A {x} has how many sides?"
        ),
    ),
    "chemical_symbol": (
        SYMBOLS,
        "What is the chemical symbol for {x}? | What is the symbol of the element {x}?",
    ),
    "comparative": (
        COMPARATIVES,
        "What is the comparative form of {x}? | What is the comparative of the adjective '{x}'?",
    ),
    "superlative": (
        ";".join(f"{x}={_superlative(c)}" for x, c in _pairs(COMPARATIVES)),
        "What is the superlative form of {x}? | What is the superlative of the adjective '{x}'?",
    ),
    "female_of": (FEMALES, "What is the female form of {x}? | What is the feminine of '{x}'?"),
    "nationality": (
        NATIONALITIES,
        "What is the nationality of a person from {x}? | Someone from {x} is said to be what"
        " nationality?",
    ),
    "country_of_city": (CITIES, "In which country is {x}? | Which country is the city of {x} in?"),
    "currency": (
        CURRENCIES,
        "What is the currency of {x}? | What currency is used in {x}? | What money does {x} use?",
    ),
    "author_of": (AUTHORS, "Who wrote {x}? | Who is the author of {x}?"),
    "number_word": (
        ";".join(f"{n}={w}" for n, w in NUMBER_NAMES.items()),
        "How do you write {x} in words? | Spell out the number {x}.",
    ),
    "arith_double": (
        ";".join(f"{n}={2 * n}" for n in range(2, 51)),
        "What is double {x}? | What is twice {x}?",
    ),
    "arith_half": (
        ";".join(f"{n}={n // 2}" for n in range(4, 101, 2)),
        "What is half of {x}? | What is half of the number {x}?",
    ),
    "unit_dozen": (
        ";".join(f"{n}={12 * n}" for n in range(2, 11)),
        "How many eggs are in {x} dozen? | How many items make {x} dozen?",
    ),
}
# Neighbour kinds: kind -> (the sequence, the step, whether it wraps around, the phrasings).
_NUMBERS = [str(n) for n in range(1, 100)]
_LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
SHIFTS = {
    "day_after": (
        DAYS,
        1,
        True,
        (
            "What day comes after {x}? | Which day of the week follows {x}?"
            " | If today is {x}, what day is tomorrow?"
        ),
    ),
    "day_before": (
        DAYS,
        -1,
        True,
        (
            "What day comes before {x}? | Which day of the week is just before {x}?"
            " | If today is {x}, what day was yesterday?"
        ),
    ),
    "month_after": (
        MONTHS,
        1,
        True,
        "What month comes after {x}? | Which month follows {x}? | What is the month after {x}?",
    ),
    "month_before": (
        MONTHS,
        -1,
        True,
        (
            "What month comes before {x}? | Which month is just before {x}?"
            " | What is the month before {x}?"
        ),
    ),
    "number_after": (
        _NUMBERS,
        1,
        False,
        (
            "What number comes after {x}? | What is the next number after {x}?"
            " | What number is one more than {x}?"
        ),
    ),
    "number_before": (
        _NUMBERS,
        -1,
        False,
        "What number comes before {x}? | What number comes just before {x}?",
    ),
    "letter_after": (
        _LETTERS,
        1,
        False,
        (
            "Which letter comes after {x} in the alphabet?"
            " | What is the next letter after {x} in the alphabet?"
        ),
    ),
}
ADD = (
    "What is {a} + {b}? | What is {a} plus {b}? | Add {a} and {b}."
    " | What is the sum of {a} and {b}? | Calculate {a} + {b}."
)
SUB = "What is {a} - {b}? | What is {a} minus {b}? | Subtract {b} from {a}. | Calculate {a} - {b}."
MUL = (
    "What is {a} times {b}? | What is {a} x {b}? | Multiply {a} by {b}."
    " | What is the product of {a} and {b}?"
)
# Arithmetic kinds: kind -> (operands (a, b), the operation, the phrasings).
ARITHMETIC = {
    "arith_add_1digit": ([(a, b) for a in range(1, 10) for b in range(1, 10)], "+", ADD),
    "arith_add_2digit": ([(a, b) for a in range(10, 50) for b in range(10, 50)], "+", ADD),
    "arith_sub_1digit": (
        [(a, b) for a in range(2, 10) for b in range(2, a) if a != 2 * b],
        "-",
        SUB,
    ),
    "arith_sub_2digit": (
        [(a, b) for a in range(12, 61) for b in range(10, a - 1) if a != 2 * b],
        "-",
        SUB,
    ),
    "arith_mul_1digit": ([(a, b) for a in range(2, 10) for b in range(2, 10)], "*", MUL),
    "arith_mul_10": ([(a, 10) for a in range(2, 100)], "*", MUL),
}
# Choice kinds: "Which is larger, 37 or 52?", "Is 7 even or odd?", "Which is bigger, a cat or a
# horse?" (the answer is one of the options).
COMPARE = "Which is larger, {a} or {b}? | Which number is bigger: {a} or {b}?"
EVEN_ODD = "Is {a} an even or an odd number? | Is {a} odd or even?"
BIGGER = "Which is bigger, {a} or {b}? | Which is larger: {a} or {b}?"
SMALLER = "Which is smaller, {a} or {b}?"


class Fact:
  """One checkable fact: its `key` (what the train/eval split is over), the `answer`, the prompts
  that ask it, and `options` for a choice."""

  def __init__(self, key: str, answer, prompts: Sequence[str], options: Sequence[str] = ()):
    self.key, self.answer = key, str(answer)
    self.prompts, self.options = tuple(prompts), tuple(str(o) for o in options)


def _ask(phrasings: str, **slots) -> list[str]:
  """The prompts of one fact: every "|"-separated phrasing with its slots filled."""
  return [p.format(**slots) for p in _items(phrasings, "|")]


def _shift(names: Sequence[str], step: int, cyclic: bool, phrasings: str) -> list[Fact]:
  """Facts "the name `step` places after x in `names`" (wrapping around when cyclic)."""
  out = []
  for i, x in enumerate(names):
    j = i + step
    if cyclic or 0 <= j < len(names):
      out.append(Fact(x, names[j % len(names)], _ask(phrasings, x=x)))
  return out


def _sizes() -> list[Fact]:
  """Choices between two things of clearly different size (at least two places apart in SIZES),
  asked both ways round, for the bigger and for the smaller."""
  out = []
  for line in SIZES:
    things = _items(line)
    for i, small in enumerate(things):
      for big in things[i + 2 :]:
        options = (small.split()[-1], big.split()[-1])
        for a, b in ((small, big), (big, small)):
          key = f"{a}|{b}"
          out.append(Fact(key + "|big", options[1], _ask(BIGGER, a=a, b=b), options))
          out.append(Fact(key + "|small", options[0], _ask(SMALLER, a=a, b=b), options))
  return out


def checkable_kinds() -> dict[str, list[Fact]]:
  """Every candidate checkable kind -> its facts (fixed order)."""
  ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
  kinds = {}
  for kind, (operands, op, phrasings) in ARITHMETIC.items():
    kinds[kind] = [
        Fact(f"{a}{op}{b}", ops[op](a, b), _ask(phrasings, a=a, b=b)) for a, b in operands
    ]
  for kind, (factor, (small, large), top) in UNITS.items():
    slots = {"small": small, "large": large}
    kinds[kind] = [
        Fact(str(n), n * factor, _ask(UNIT_PHRASINGS, n=n, **slots)) for n in range(2, top + 1)
    ]
  for kind, (facts, phrasings) in LOOKUPS.items():
    kinds[kind] = [Fact(x, answer, _ask(phrasings, x=x)) for x, answer in _pairs(facts)]
  for kind, (names, step, cyclic, phrasings) in SHIFTS.items():
    kinds[kind] = _shift(names, step, cyclic, phrasings)
  kinds["letter_after"] = [f for f in kinds["letter_after"] if f.answer not in ("A", "I")]
  pairs = [
      (a, b) for a in range(11, 100) for b in range(11, 100) if a != b and (7 * a + 13 * b) % 9 == 0
  ]
  kinds["compare_numbers"] = [
      Fact(f"{a},{b}", max(a, b), _ask(COMPARE, a=a, b=b), (a, b)) for a, b in pairs
  ]
  parity = ("even", "odd")
  kinds["even_odd"] = [
      Fact(str(n), parity[n % 2], _ask(EVEN_ODD, a=n), parity) for n in range(2, 60)
  ]
  kinds["size_compare"] = _sizes()
  return kinds


def check_facts(kind: str, facts: Sequence[Fact]) -> None:
  """Every prompt is one line, and a word answer never appears in its own (non-choice) prompt
  (so restating the question is not an answer)."""
  for f in facts:
    for p in f.prompts:
      if "\n" in p:
        raise ValueError(f"{kind}: multi-line prompt {p!r}")
      if not f.options and instructions.mentions(p, f.answer):
        raise ValueError(f"{kind}: prompt {p!r} contains its answer {f.answer!r}")
      if not f.options and f.answer.isdigit():
        if float(f.answer) in {v for v, _, _ in instructions.numbers(p)}:
          raise ValueError(f"{kind}: prompt {p!r} contains its answer {f.answer!r}")
      if f.options and f.answer not in f.options:
        raise ValueError(f"{kind}: answer {f.answer!r} is not one of {f.options}")


def vocabulary(facts: Sequence[Fact]) -> list[str]:
  """The kind's answers, the candidates a word answer is told apart from."""
  return sorted({f.answer for f in facts})


def fact_candidates(prompt: str, fact: Fact, vocab: Sequence[str]) -> list[str]:
  """What the checker searches a completion for (instructions.candidates_for); [] for numbers."""
  if not fact.options and instructions.is_number(fact.answer):
    return []
  return instructions.candidates_for(prompt, fact.answer, vocab, fact.options)


def split_facts(facts: Sequence[Fact], kind: str, seed: int, fraction: float):
  """(train facts, eval facts): `fraction` of the facts (at least one) are eval-only."""
  rng = random.Random(f"{seed}:facts:{kind}")
  order = list(range(len(facts)))
  rng.shuffle(order)
  k = max(1, round(fraction * len(facts)))
  held = set(order[:k])
  return [f for i, f in enumerate(facts) if i not in held], [
      f for i, f in enumerate(facts) if i in held
  ]


def measurement_pool(
    facts: Sequence[Fact], kind: str, seed: int, size: int
) -> list[tuple[str, Fact]]:
  """`size` (prompt, fact) pairs drawn from all of a kind's prompts (all of them when fewer)."""
  prompts = [(p, f) for f in facts for p in f.prompts]
  rng = random.Random(f"{seed}:pool:{kind}")
  return rng.sample(prompts, min(size, len(prompts)))


# ------------------------------------------------------------------------------------ generation


def _record(prompt: str, kind: str, topic: str, heldout: bool, **extra) -> dict:
  rec = {"messages": [{"role": "user", "content": prompt}], "kind": kind, "topic": topic}
  return rec | {"heldout_topic": heldout} | extra


def _shares(capacity: dict[str, int], total: int) -> dict[str, int]:
  """Splits `total` over the keys as evenly as their capacities allow (water filling)."""
  share, left = {k: 0 for k in capacity}, total
  while left > 0:
    open_keys = [k for k in sorted(capacity) if share[k] < capacity[k]]
    if not open_keys:
      raise ValueError(f"only {sum(capacity.values())} prompts for {total} wanted")
    each = max(1, left // len(open_keys))
    for k in open_keys:
      take = min(each, capacity[k] - share[k], left)
      share[k] += take
      left -= take
      if left == 0:
        break
  return share


def _draw(pools: dict[str, list[dict]], total: int, rng: random.Random) -> list[dict]:
  """`total` records, spread over the pools as evenly as their sizes allow, drawn without
  replacement."""
  shares = _shares({k: len(v) for k, v in pools.items()}, total)
  return [r for k in sorted(pools) for r in rng.sample(pools[k], shares[k])]


def _checkable_records(facts: Sequence[Fact], kind: str) -> list[dict]:
  out = []
  for f in facts:
    for p in f.prompts:
      extra = {"answer": f.answer} | ({"options": list(f.options)} if f.options else {})
      out.append(_record(p, kind, f.key, False, **extra))
  return out


def generate(
    seed: int = 0,
    num_train: int = 3000,
    num_eval: int = 300,
    checkable: Optional[Sequence[str]] = None,
    checkable_fraction: float = 0.15,
    heldout_fraction: float = 0.12,
    eval_fact_fraction: float = 0.2,
) -> tuple[list[dict], list[dict]]:
  """(train records, eval records), deterministic in the arguments (see the module docstring).

  `checkable`: the checkable kinds to include (default: every candidate kind); each split gets
  `checkable_fraction` of its records from them, or as many as they have (open-ended prompts fill
  the rest)."""
  topics = topic_lists()
  heldout = heldout_topics(topics, seed, heldout_fraction)
  combos = open_combinations(topics, heldout)
  kinds = checkable_kinds()
  names = sorted(kinds) if checkable is None else sorted(checkable)
  train_c, eval_c = {}, {}
  for kind in names:
    check_facts(kind, kinds[kind])
    tr, ev = split_facts(kinds[kind], kind, seed, eval_fact_fraction)
    train_c[kind], eval_c[kind] = _checkable_records(tr, kind), _checkable_records(ev, kind)
  rng = random.Random(f"{seed}:draw")
  n_train_c = min(round(checkable_fraction * num_train), sum(map(len, train_c.values())))
  n_eval_c = min(round(checkable_fraction * num_eval), sum(map(len, eval_c.values())))
  train = _draw({k: v[False] for k, v in combos.items()}, num_train - n_train_c, rng)
  train += _draw(train_c, n_train_c, rng)
  seen = {r["messages"][0]["content"] for r in train}
  n_open = num_eval - n_eval_c
  held = _draw({k: v[True] for k, v in combos.items()}, n_open // 2, rng)
  fresh = {
      k: [r for r in v[False] if r["messages"][0]["content"] not in seen] for k, v in combos.items()
  }
  evals = held + _draw(fresh, n_open - len(held), rng)
  evals += _draw(eval_c, n_eval_c, rng)
  rng.shuffle(train)
  rng.shuffle(evals)
  return train, evals


# ------------------------------------------------------------------------------ the teacher's test


def _teacher():
  """(model, params, tokenizer, stop ids) of the cached SmolLM2-135M-Instruct GGUF."""
  from gkd_jax import chat_template, released, tokenizers  # pylint: disable=import-outside-toplevel
  from gkd_jax.models.hf import load_pretrained  # pylint: disable=import-outside-toplevel

  path = str(released.path(released.SMOLLM2_135M))
  model, params = load_pretrained(path)
  tok = tokenizers.load_tokenizer(path)
  return model, params, tok, (chat_template.end_of_turn_id(tok), tok.eos_id)


def greedy_completions(
    prompts: Sequence[str], teacher, max_new_tokens: int = 48, batch_size: int = 32
) -> list[str]:
  """The teacher's greedy completion of each single-turn prompt, through its own chat template;
  fixed [batch_size, P] shapes (prompts left-padded) so one compiled program serves every batch."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from gkd_jax import chat_template, sample  # pylint: disable=import-outside-toplevel

  model, params, tok, stops = teacher
  ids = [chat_template.encode_chat(tok, [{"role": "user", "content": p}]) for p in prompts]
  P = -(-max(len(i) for i in ids) // 8) * 8
  out = []
  for start in range(0, len(ids), batch_size):
    chunk = ids[start : start + batch_size]
    chunk = chunk + [chunk[0]] * (batch_size - len(chunk))  # padding rows, dropped below
    tokens = np.full((batch_size, P), tok.pad_id, np.int32)
    mask = np.zeros((batch_size, P), np.int32)
    for row, seq in enumerate(chunk):
      tokens[row, P - len(seq) :], mask[row, P - len(seq) :] = seq, 1
    got = sample(
        model,
        params,
        tokens,
        mask,
        jax.random.key(0),
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        eos_id=stops,
    )
    toks, keep = np.asarray(got.tokens), np.asarray(got.mask)
    for row in range(min(batch_size, len(ids) - start)):
      out.append(tok.decode([int(t) for t, m in zip(toks[row], keep[row]) if m and t not in stops]))
    print(f"  teacher: {len(out)}/{len(ids)} prompts", flush=True)
  return out


def _appears(completion: str, fact: Fact) -> bool:
  """Whether the answer appears anywhere in the completion (a number or a whole word): a loose
  upper bound on the checker's accuracy, reported beside it."""
  if instructions.is_number(fact.answer) and not fact.options:
    return float(fact.answer) in {v for v, _, _ in instructions.numbers(completion)}
  return instructions.mentions(completion, fact.answer)


def teacher_completions(prompts: Sequence[str], max_new_tokens: int, cache: str) -> list[str]:
  """The teacher's greedy completions; with `cache` (a JSONL file of {"prompt", "completion"}),
  those already there are reused and the new ones added, so a change of the checker is
  re-measured without the teacher."""
  done = {}
  if cache and os.path.isfile(cache):
    with open(cache, encoding="utf-8") as f:
      for line in f:
        row = json.loads(line)
        if row.get("max_new_tokens") == max_new_tokens:
          done[row["prompt"]] = row["completion"]
  todo = sorted({p for p in prompts if p not in done})
  if todo:
    for p, c in zip(todo, greedy_completions(todo, _teacher(), max_new_tokens)):
      done[p] = c
    if cache:
      with open(cache, "a", encoding="utf-8") as f:
        for p in todo:
          row = {"prompt": p, "completion": done[p], "max_new_tokens": max_new_tokens}
          f.write(json.dumps(row, ensure_ascii=False) + "\n")
  return [done[p] for p in prompts]


def measure_teacher(seed: int, pool_size: int, max_new_tokens: int, cache: str = "") -> dict:
  """Per candidate kind: the teacher's accuracy by the checker on a pool of its prompts, how often
  the answer appears at all, and a few example completions (right and wrong)."""
  kinds = checkable_kinds()
  pools = {k: measurement_pool(f, k, seed, pool_size) for k, f in kinds.items()}
  flat = [(k, p, f) for k in sorted(pools) for p, f in pools[k]]
  completions = teacher_completions([p for _, p, _ in flat], max_new_tokens, cache)
  table = {}
  for (kind, prompt, fact), completion in zip(flat, completions):
    cands = fact_candidates(prompt, fact, vocabulary(kinds[kind]))
    row = table.setdefault(kind, {"n": 0, "right": 0, "appears": 0, "examples": []})
    ok = instructions.check(prompt, completion, fact.answer, cands)
    row["n"] += 1
    row["right"] += ok
    row["appears"] += _appears(completion, fact)
    if sum(e["correct"] == ok for e in row["examples"]) < 2:
      example = {"prompt": prompt, "answer": fact.answer, "completion": completion, "correct": ok}
      row["examples"].append(example)
  for row in table.values():
    row["accuracy"] = round(row["right"] / row["n"], 4)
    row["answer_appears"] = round(row["appears"] / row["n"], 4)
    row["kept"] = row["accuracy"] >= THRESHOLD
  return table


# ------------------------------------------------------------------------------------ the files


def prompt_token_lengths(records: Sequence[dict]) -> Optional[list[int]]:
  """Token counts of the prompts by the teacher's tokenizer (None when it is not cached)."""
  from gkd_jax import released, tokenizers  # pylint: disable=import-outside-toplevel

  try:
    tok = tokenizers.load_tokenizer(str(released.path(released.SMOLLM2_135M)))
  except FileNotFoundError:
    return None
  return [len(tok.encode(r["messages"][0]["content"], add_bos=False)) for r in records]


def _count(records: Sequence[dict], key: Callable[[dict], str]) -> dict[str, int]:
  out = {}
  for r in records:
    out[key(r)] = out.get(key(r), 0) + 1
  return dict(sorted(out.items()))


def write_jsonl(path: str, records: Sequence[dict]) -> None:
  """One JSON object per line, keys sorted, so a rebuild is byte-identical."""
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")


def readme(train, evals, teacher: dict, meta: dict) -> str:
  """The assets' README: how they were built, counts, and the teacher's table."""
  kinds = sorted(_count(train + evals, lambda r: r["kind"]))
  tr, ev = _count(train, lambda r: r["kind"]), _count(evals, lambda r: r["kind"])
  held = _count([r for r in evals if r["heldout_topic"]], lambda r: r["kind"])
  open_rows = [
      f"| {k} | {tr.get(k, 0)} | {ev.get(k, 0)} | {held.get(k, 0)} |"
      for k in kinds
      if k in TASK_TYPES
  ]
  check_rows = [f"| {k} | {tr.get(k, 0)} | {ev.get(k, 0)} |" for k in kinds if k not in TASK_TYPES]
  t_rows = []
  for k, row in sorted(teacher.items(), key=lambda kv: (-kv[1]["accuracy"], kv[0])):
    verdict = "kept" if row["kept"] else "rejected"
    t_rows.append(
        f"| {k} | {row['accuracy']:.3f} | {row['answer_appears']:.3f} | {row['n']} | {verdict} |"
    )
  n_check = lambda rs: sum("answer" in r for r in rs)  # noqa: E731
  lengths = meta.get("prompt_tokens")
  lines = [
      "# Instruction prompts (prune-and-distill demo)",
      "",
      "Built by `experiments/build_instruction_prompts.py` (its docstring says how); rebuild with",
      "",
      f"    {meta['command']}",
      "",
      f"(seed {meta['seed']}; {meta['runtime_s']:.0f} s on 2 CPU cores,"
      f" {meta['teacher_runtime_s']:.0f} s of it the teacher's measurement). Add",
      "`--teacher_accuracy=gkd_jax/tasks/assets/instructions/teacher_accuracy.json` to reuse the",
      "measured table instead of running the teacher again.",
      "",
      f"- train.jsonl: {len(train)} records, {n_check(train)} checkable",
      f"- eval.jsonl: {len(evals)} records, {n_check(evals)} checkable; "
      f"{sum(r['heldout_topic'] for r in evals)} open-ended ones on topics train never uses",
      "- no prompt is in both files; checkable facts (the operands, the country, the word...)",
      "  asked in eval are never asked in train",
      (
          f"- prompt length (SmolLM2 tokens, user content only): max {max(lengths)}, "
          f"mean {sum(lengths) / len(lengths):.1f}"
          if lengths
          else "- prompt length: tokenizer not cached at build time"
      ),
      "",
      'Records: `{"messages": [{"role": "user", "content": ...}], "kind": ..., "topic": ...,',
      '"heldout_topic": ...}`, plus `"answer"` (and `"options"` for a choice) when checkable;',
      "`gkd_jax.tasks.instructions` checks completions (`evaluate` -> checkable_accuracy,",
      "num_checkable).",
      "",
      "## Open-ended task types",
      "",
      "| task type | train | eval | eval, held-out topics |",
      "| --- | --- | --- | --- |",
      *open_rows,
      "",
      "## Checkable kinds in the set",
      "",
      "| kind | train | eval |",
      "| --- | --- | --- |",
      *check_rows,
      "",
      "## The teacher on every candidate kind",
      "",
      f"SmolLM2-135M-Instruct (`{meta['teacher']}`), greedy, {meta['max_new_tokens']} new tokens,",
      f"through its own chat template, on up to {meta['pool_size']} prompts per kind drawn from",
      f"all of the kind's prompts. A kind is kept when accuracy >= {THRESHOLD}. accuracy is the",
      "bundled checker's verdict; answer appears is how often the right answer occurs anywhere in",
      "the completion (a loose upper bound: rambling completions that reach it late, or list it",
      "among wrong ones, count).",
      "",
      "| kind | accuracy | answer appears | n | |",
      "| --- | --- | --- | --- | --- |",
      *t_rows,
      "",
      "Notes. n = 40 is a coarse sample (a standard error of about 0.07 near 0.7): kinds at",
      "exactly 0.700 are kept by the rule, and several rejected ones sit just below it. For the",
      "choice kinds (compare_numbers, even_odd, size_compare) answer appears is meaningless: both",
      "options are in the question and most completions restate it. The checker's vocabulary of",
      "wrong answers is every answer of the kind here; in the bundled files, every answer of the",
      "kind that they hold.",
      "Example completions per kind (right and wrong) are in teacher_accuracy.json.",
      "",
  ]
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_train", type=int, default=3000)
  parser.add_argument("--num_eval", type=int, default=300)
  parser.add_argument("--pool_size", type=int, default=40, help="Teacher prompts per kind.")
  parser.add_argument("--max_new_tokens", type=int, default=48)
  parser.add_argument("--teacher_accuracy", default="", help="Reuse this measured table.")
  parser.add_argument(
      "--completions", default="", help="JSONL cache of the teacher's completions (read, extended)."
  )
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)
  start = time.perf_counter()
  if args.teacher_accuracy:
    with open(args.teacher_accuracy, encoding="utf-8") as f:
      saved = json.load(f)
    teacher, teacher_s = saved["kinds"], saved["meta"]["teacher_runtime_s"]
    start -= teacher_s  # the build's runtime counts the measurement that is reused
  else:
    teacher = measure_teacher(args.seed, args.pool_size, args.max_new_tokens, args.completions)
    teacher_s = time.perf_counter() - start
  kept = sorted(k for k, row in teacher.items() if row["kept"])
  print("kept:", kept, "\nrejected:", sorted(set(teacher) - set(kept)), flush=True)
  train, evals = generate(args.seed, args.num_train, args.num_eval, kept)
  lengths = prompt_token_lengths(train + evals)
  if lengths and max(lengths) > MAX_PROMPT_TOKENS:
    raise ValueError(f"a prompt has {max(lengths)} tokens (> {MAX_PROMPT_TOKENS})")
  os.makedirs(args.out, exist_ok=True)
  write_jsonl(os.path.join(args.out, "train.jsonl"), train)
  write_jsonl(os.path.join(args.out, "eval.jsonl"), evals)
  meta = {
      "seed": args.seed,
      "pool_size": args.pool_size,
      "max_new_tokens": args.max_new_tokens,
      "threshold": THRESHOLD,
      "teacher": "SmolLM2-135M-Instruct.Q4_1.gguf",
      "teacher_runtime_s": round(teacher_s, 1),
      "runtime_s": round(time.perf_counter() - start, 1),
      "prompt_tokens": lengths,
      "command": ".venv/bin/python experiments/build_instruction_prompts.py",
  }
  with open(os.path.join(args.out, "teacher_accuracy.json"), "w", encoding="utf-8") as f:
    saved_meta = {k: v for k, v in meta.items() if k != "prompt_tokens"}
    json.dump(
        {"meta": saved_meta, "kinds": teacher}, f, indent=1, sort_keys=True, ensure_ascii=False
    )
    f.write("\n")
  with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
    f.write(readme(train, evals, teacher, meta))
  print(
      f"wrote {len(train)} train and {len(evals)} eval records to {args.out}"
      f" in {meta['runtime_s']} s"
  )


if __name__ == "__main__":
  main()
