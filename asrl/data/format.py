"""The thinking format: which tags open and close the reasoning block and its sections.

The paper's format is

    <|thinking|>
    [LOGIC]analytical steps[/LOGIC]
    [INTUITION]a gut check[/INTUITION]
    <|/thinking|>
    final answer

The tag strings are configuration (``format:`` in the YAML), never literals elsewhere in the
code, so the same trainer serves ``[CODE]/[EXPLANATION]`` or ``[CLAIM]/[EVIDENCE]`` formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Section:
    """One tagged section inside the thinking block, e.g. ``[LOGIC]…[/LOGIC]``."""

    open: str
    close: str


def _paper_sections() -> tuple[Section, ...]:
    return (Section("[LOGIC]", "[/LOGIC]"), Section("[INTUITION]", "[/INTUITION]"))


@dataclass(frozen=True)
class ThinkingFormat:
    """Tags of the thinking block. Defaults are the paper's."""

    think_open: str = "<|thinking|>"
    think_close: str = "<|/thinking|>"
    sections: tuple[Section, ...] = field(default_factory=_paper_sections)

    @classmethod
    def from_pairs(
        cls,
        pairs: list[tuple[str, str]] | list[list[str]],
        think_open: str = "<|thinking|>",
        think_close: str = "<|/thinking|>",
    ) -> ThinkingFormat:
        return cls(think_open, think_close, tuple(Section(a, b) for a, b in pairs))

    def render(self, section_texts: list[str], answer: str) -> str:
        """A response with one text per section, then the final answer."""
        if len(section_texts) != len(self.sections):
            raise ValueError(f"need {len(self.sections)} section texts, got {len(section_texts)}")
        body = "\n".join(f"{s.open}{t}{s.close}" for s, t in zip(self.sections, section_texts))
        return f"{self.think_open}\n{body}\n{self.think_close}\n{answer}"

    def has_thinking(self, text: str) -> bool:
        """True when the text contains a thinking block opener (the reference uses the format)."""
        return self.think_open in text

    def is_well_formed(self, text: str) -> bool:
        """The paper's format check: every section tag is opened and closed.

        Like the paper we only ask that each open and close tag appears; we add that the
        close tag comes after its open tag, which a sampler can get wrong.
        """
        for s in self.sections:
            i = text.find(s.open)
            if i < 0 or text.find(s.close, i + len(s.open)) < 0:
                return False
        return True

    def final_answer(self, text: str) -> str:
        """The text after the thinking block (the whole text when there is no closed block).

        Correctness is judged on this part only, a refinement of the paper, which compared
        the whole response and so let an answer mentioned inside [LOGIC] count as correct.
        """
        i = text.rfind(self.think_close)
        if i >= 0:
            return text[i + len(self.think_close) :].strip()
        return text.strip()
