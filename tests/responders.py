"""Responders for `FakeOpenAIServer` that answer Self-Instruct's prompts like a cooperative teacher, deterministically.

`SelfInstructResponder()(request_json) -> completion text` recognises the four prompts of `selfinstruct_nb.prompts`
and answers each in the format the paper's templates ask for, with a little of the format drift real models show
(numbering gaps, a wrapped item, a chat preamble, instructions the static filters reject). Everything is a function
of (prompt, seed, temperature): the same request always gets the same answer.
"""
from __future__ import annotations
import hashlib, json, random, re

# an instruction is (verb phrase) + about + (topic) + (constraint): ~40 x 52 x 30 combinations, so that most of them
# stay below ROUGE-L 0.7 with each other, as a good teacher's would
ACTIONS = ["Write a limerick", "Draft a short memo", "List the pros and cons", "Create a packing checklist",
           "Suggest five catchy names for a podcast", "Design a one-week study plan", "Compose a haiku sequence",
           "Give a step-by-step guide to getting started", "Summarize the history", "Invent a board game",
           "Write a persuasive speech", "Prepare interview questions for an expert", "Explain the basic science",
           "Describe a typical day of someone working", "Propose a small research project",
           "Plan a themed dinner party", "Write a product description for a gadget", "Tell a bedtime story",
           "Recommend three books and say why", "Debunk a popular myth", "Create a glossary of key terms",
           "Write a short news report", "Outline a beginner workshop", "Draft a polite complaint letter",
           "Brainstorm fundraising ideas", "Estimate the yearly cost of a hobby", "Write song lyrics",
           "Create a riddle whose answer relates", "Compose a motivational tweet", "Sketch the plot of a mystery novel",
           "Draft a safety briefing", "Write a travel blog intro", "Formulate a debate motion",
           "Give an analogy that clarifies a concept", "Write a job advertisement for a specialist",
           "Plan a field trip", "Write a restaurant review themed", "Create a trivia question with its answer",
           "Suggest a science fair experiment", "Draft a tweet thread"]
CLF_ACTIONS = ["Classify the sentiment of a review {about} as positive, negative, or neutral",
               "Decide whether a claim {about} is true or false",
               "Tell me if an email {about} is spam or not spam",
               "Detect whether a sentence {about} is sarcastic, answering yes or no",
               "Identify which category a headline {about} belongs to: politics, sports, or science"]
CONSTRAINTS = ["", "", "", " in under fifty words", " for a group of {audience}", " using only simple words",
               " as a numbered list", " from the point of view of a {persona}", " with a {style} tone",
               " that a {persona} would enjoy", " in exactly three sentences", " without using jargon",
               " for a school newsletter", " aimed at {audience} in a small town", " including one surprising fact",
               " and end with a question", " suitable for a radio segment", " in the style of a fairy tale",
               " comparing it with {topic2}", " that fits on a postcard", " with two concrete examples",
               " for a rainy afternoon", " as a short dialogue", " using a {style} voice",
               " for {audience} who have never heard of it", " with a catchy title", " in the second person",
               " that could be read aloud in one minute", " mentioning a common mistake", " with a budget of fifty dollars"]
BAD = ["Summarize {topic}.", "Draw a map showing {topic}.", "Write a program that simulates {topic}.",
       "Plot a graph of {topic} trends over time.", "Describe the picture about {topic} in detail."]
TOPICS = ["urban gardening", "ocean tides", "medieval castles", "electric bicycles", "sourdough baking",
          "public libraries", "volcanic islands", "chess openings", "solar panels", "jazz improvisation",
          "remote work", "bird migration", "ancient Rome", "space telescopes", "coral reefs", "board games",
          "honeybees", "rainforest conservation", "vintage cameras", "marathon training", "tea ceremonies",
          "quantum computing", "street food", "glacier melting", "renewable energy", "sign language",
          "mountain hiking", "recycling plastics", "desert ecosystems", "origami", "the printing press",
          "video game design", "wind turbines", "folk music", "personal budgeting", "sleep hygiene",
          "the water cycle", "container shipping", "wildfire prevention", "pottery", "credit scores",
          "the immune system", "time zones", "lighthouses", "beekeeping", "public speaking", "typography",
          "earthquake safety", "photosynthesis", "minimalist living", "the stock market", "kite surfing"]
AUDIENCES = ["children", "retirees", "first-year students", "busy parents", "software engineers", "tourists",
             "small business owners", "teenagers", "nurses", "farmers", "new employees", "museum visitors"]
PERSONAS = ["pirate", "librarian", "astronaut", "grandmother", "detective", "chef", "sports commentator", "robot"]
STYLES = ["humorous", "formal", "gentle", "dramatic", "playful", "melancholic", "upbeat", "concise"]


def _prompt_text(req: dict) -> tuple[str, bool]:
    if "messages" in req:
        return "\n".join(str(m.get("content", "")) for m in req.get("messages") or []), True
    p = req.get("prompt", "")
    return ("\n".join(map(str, p)) if isinstance(p, list) else str(p)), False


def _rng(*keys) -> random.Random:
    return random.Random(int(hashlib.sha256(json.dumps(keys, default=str).encode()).hexdigest()[:16], 16))


def make_instruction(r: random.Random, p_bad: float = 0.1, p_clf: float = 0.15) -> str:
    "A plausible instruction from the action/topic/constraint tables (sometimes one the static filters reject)."
    topic, topic2 = r.sample(TOPICS, 2)
    slots = dict(topic=topic, topic2=topic2, audience=r.choice(AUDIENCES), style=r.choice(STYLES), persona=r.choice(PERSONAS))
    x = r.random()
    if x < p_bad: return r.choice(BAD).format(**slots)
    if x < p_bad + p_clf: return r.choice(CLF_ACTIONS).format(about=f"about {topic}") + "."
    return f"{r.choice(ACTIONS)} about {topic}{r.choice(CONSTRAINTS).format(**slots)}."


def is_classification_text(instruction: str) -> bool:
    low = instruction.lower()
    return any(k in low for k in ("classify", "decide whether", "true or false", "spam or not", "detect whether",
                                  "which category", "yes or no"))


def labels_of(instruction: str) -> list[str]:
    low = instruction.lower()
    if "positive, negative, or neutral" in low: return ["Positive", "Negative", "Neutral"]
    if "true or false" in low: return ["True", "False"]
    if "spam or not" in low: return ["Spam", "Not spam"]
    if "politics, sports, or science" in low: return ["Politics", "Sports", "Science"]
    return ["Yes", "No"]


class SelfInstructResponder:
    "Deterministic answers to the instruction-generation, classification and instance prompts."
    def __init__(self, p_bad: float = 0.1, p_gap: float = 0.1, p_wrap: float = 0.05, items: int = 8):
        self.p_bad, self.p_gap, self.p_wrap, self.items = p_bad, p_gap, p_wrap, items
        self.calls = 0

    def __call__(self, req: dict) -> str:
        self.calls += 1
        text, chat = _prompt_text(req)
        r = _rng(text, req.get("seed"), req.get("temperature"))
        if text.rstrip().endswith("Is it classification?"):
            instr = text.rstrip().rsplit("Task:", 1)[-1].rsplit("\n", 1)[0].strip()
            return (" Yes" if is_classification_text(instr) else " No") + "\nTask:"
        last_task = text.rstrip("\n").rsplit("Task:", 1)[-1].strip()
        if text.startswith("Given the classification task definition"):
            return self.output_first(last_task, r)
        if text.startswith("Come up with examples"):
            return self.input_first(last_task, r)
        if "Come up with a series of" in text:
            return self.task_list(text, chat, r)
        return "I am not sure what you mean."

    def task_list(self, text: str, chat: bool, r: random.Random) -> str:
        task_style = bool(re.search(r"^Task \d+:", text, re.M))
        n = 9
        lines = []
        for k in range(self.items):
            instr = make_instruction(r, self.p_bad)
            if r.random() < self.p_wrap and " " in instr:     # an item wrapped over two lines
                cut = instr.index(" ", len(instr) // 2) if " " in instr[len(instr) // 2:] else instr.index(" ")
                instr = instr[:cut] + "\n" + instr[cut + 1:]
            label = f"Task {n}:" if task_style else f"{n}."
            lines.append((label, instr))
            n += 2 if r.random() < self.p_gap else 1         # a gap in the numbering
        body = "\n".join(f"{lab} {ins}" for lab, ins in lines)
        if chat: return "Here are some more tasks:\n\n" + body + "\n\nLet me know if you need more."
        first = body[len(lines[0][0]) + 1:]                    # a completion continues after "Task 9:"
        return " " + first + "\n" + ("Task 16" if task_style else "16.") + ": Stop here."

    def output_first(self, instruction: str, r: random.Random) -> str:
        labs = labels_of(instruction)
        out = []
        for lab in labs:
            topic = r.choice(TOPICS)
            out.append(f"Class label: {lab}\nSentence: A {r.choice(STYLES)} remark about {topic}, labelled {lab.lower()} ({r.randrange(1000)}).")
        return "\n".join(out) + "\n\nTask:"

    def input_first(self, instruction: str, r: random.Random) -> str:
        if "given" not in instruction.lower() and r.random() < 0.5:
            return f"Output: A {r.choice(STYLES)} answer to '{instruction[:40]}' ({r.randrange(1000)}).\n\nTask:"
        k = r.choice([1, 2, 3])
        parts = []
        for i in range(1, k + 1):
            parts.append(f"Example {i}\nInput: Something about {r.choice(TOPICS)} ({r.randrange(1000)}).\n"
                         f"Output: A {r.choice(STYLES)} response number {i} ({r.randrange(1000)}).")
        return "\n".join(parts) + "\n\nTask:"


class DistillResponder:
    "Answers stage 20_distill's requests: explanations, translations (every `english_every`-th in English, a bad translator), Chinese answers, 1-10 scores."
    def __init__(self, english_every: int = 3):
        self.english_every = english_every
        self.english: list[str] = []      # texts of the translation requests answered in English
        self.translations = 0

    def in_english(self, source: str) -> bool:
        "Does this responder answer the translation request for `source` in English (no Chinese character)?"
        return int(hashlib.sha256(source.strip().encode()).hexdigest(), 16) % self.english_every == 0

    def __call__(self, req: dict) -> str:
        text, _ = _prompt_text(req)
        if text.startswith("Translate the following text into Chinese."):
            self.translations += 1
            source = text.split("\n\n", 1)[-1]
            if self.in_english(source):
                self.english.append(source)
                return f"Sure! Here is the answer: {source[:40]}"
            return "请回答下面的问题：" + str(len(source))
        if "We would like to request your feedback" in text:
            return f"{_rng(text).randint(1, 10)}\nThe answer is relevant and mostly accurate."
        if "### Instruction:" in text:
            return "这是一个详细的回答。"
        return f"Step 1: read the task. Step 2: answer it ({len(text)} characters)."
