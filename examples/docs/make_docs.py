"""Writes the sample documents for `ownllm data from-docs` (fictional, written for this project).

    python examples/docs/make_docs.py [OUT_DIR]      # default: examples/docs/

- handbook.docx / handbook.pdf: the English handbook of the fictional Aurelo H2 home hub — prose
  sections, an FAQ whose questions are headings, a Q:/A: troubleshooting list and (DOCX) a
  question/answer table;
- policy_zh.docx / policy_zh.html: a Chinese returns-and-service policy (Lumora), with 问：/答：
  pairs, a heading ending in ？ and a 问题/答案 table;
- faq_truth.json: every question–answer pair the documents state as FAQ, per file, which
  `benchmarks/from_docs.py` scores the extraction against.

Needs python-docx (an ownllm dependency) and fpdf2 (in ownllm's `test` extra) for the PDF.
"""
from __future__ import annotations

import datetime
import html
import json
import os
import sys

TITLE = "Aurelo H2 Home Hub — Owner's Handbook"
PROSE = [
    ("Getting started", [
        "The Aurelo H2 is a home hub that connects lights, locks and sensors over Zigbee and Wi-Fi. "
        "It ships with a 12 V power adapter, a flat network cable and a wall bracket.",
        "Place the hub at least 1.5 metres away from microwave ovens and cordless phone bases. "
        "The status ring glows amber while the hub starts and turns teal when it is ready.",
    ]),
    ("Power and batteries", [
        "The hub keeps working for up to 9 hours on its internal backup battery during a power cut. "
        "The battery recharges fully in about 3 hours once mains power returns.",
        "Use only the supplied 12 V adapter; adapters above 15 V void the warranty.",
    ]),
    ("Warranty and service", [
        "Every Aurelo H2 carries a 30-month limited warranty from the date on the receipt. "
        "Repairs under warranty are handled at the Aurelo service centre in Tilburg.",
        "Accidental damage and water damage are not covered by the limited warranty.",
    ]),
]
# Questions as headings followed by their answer (the FAQ section of both files).
FAQ = [
    ("How do I reset the Aurelo H2 to factory settings?",
     "Hold the pinhole button on the back for 12 seconds until the ring flashes white."),
    ("Which app controls the hub?", "The hub is controlled with the Aurelo Home app for Android and iOS."),
    ("How many devices can one hub manage?", "One Aurelo H2 manages up to 64 paired devices."),
    ("Does the hub work without internet?",
     "Yes. Automations that were saved on the hub keep running on the local network without internet."),
    ("How often does the firmware update?",
     "Firmware updates arrive about every six weeks and install overnight at 03:00."),
]
# The troubleshooting list, written as Q:/A: lines.
QA_LINES = [
    ("The ring stays amber. What should I do?",
     "Check the network cable, then restart the hub by unplugging it for 10 seconds."),
    ("My door lock does not pair.", "Move the lock within 2 metres of the hub and start pairing again from the app."),
    ("What does a red ring mean?", "A red ring means the hub lost its connection to the Aurelo cloud."),
]
# The DOCX's table of short questions and answers.
TABLE = [
    ("What is the hub's Wi-Fi band?", "The hub uses 2.4 GHz Wi-Fi only."),
    ("What colour is the hub?", "The Aurelo H2 comes in slate grey."),
    ("How much does the hub weigh?", "The hub weighs 310 grams."),
]

ZH_TITLE = "Lumora 退换货与售后服务政策"
ZH_PROSE = [
    ("适用范围", ["本政策适用于在 Lumora 官方商城购买的全部智能家居产品。会员等级不影响本政策的适用。"]),
    ("保修期限", ["Lumora 智能门锁的保修期为两年，自签收之日起计算。电池和外壳划痕不在保修范围内。"]),
]
ZH_QA = [
    ("签收后多少天内可以无理由退货？", "签收后十五天内，商品完好即可申请无理由退货。"),
    ("退货运费由谁承担？", "因质量问题退货的运费由 Lumora 承担，无理由退货的运费由顾客承担。"),
    ("退款多久到账？", "仓库验收后三个工作日内原路退款。"),
]
ZH_HEADING_Q = [
    ("如何申请上门维修？", "拨打售后热线 400-820-1177，工程师会在四十八小时内预约上门。"),
    ("发票可以补开吗？", "可以。订单完成后一百八十天内可以在订单页面申请补开发票。"),
]
ZH_TABLE = [
    ("以旧换新的旧机需要满足什么条件？", "旧机需能正常开机，且无进水和严重摔损。"),
    ("海外地址可以发货吗？", "目前仅支持中国大陆地址发货。"),
]


def truth() -> dict:
    en = [{"question": q, "answer": a} for q, a in FAQ + QA_LINES]
    zh = [{"question": q, "answer": a} for q, a in ZH_QA + ZH_HEADING_Q + ZH_TABLE]
    return {"handbook.docx": en + [{"question": q, "answer": a} for q, a in TABLE],
            "handbook.pdf": en, "policy_zh.docx": zh, "policy_zh.html": zh}


def _docx_with_prose(title: str, prose):
    """A Word document (fixed dates: the same content every run) holding the title and prose sections."""
    import docx

    d = docx.Document()
    d.core_properties.created = d.core_properties.modified = datetime.datetime(2026, 1, 1)
    d.add_heading(title, 0)
    for heading, paragraphs in prose:
        d.add_heading(heading, 1)
        for p in paragraphs:
            d.add_paragraph(p)
    return d


def write_docx(path: str) -> None:
    d = _docx_with_prose(TITLE, PROSE)
    d.add_heading("Frequently asked questions", 1)
    for q, a in FAQ:
        d.add_heading(q, 2)
        d.add_paragraph(a)
    d.add_heading("Troubleshooting", 1)
    for q, a in QA_LINES:
        d.add_paragraph(f"Q: {q}")
        d.add_paragraph(f"A: {a}")
    d.add_heading("Quick facts", 1)
    _docx_table(d, ("Question", "Answer"), TABLE)
    d.save(path)


def _docx_table(d, header, rows) -> None:
    t = d.add_table(rows=1, cols=2)
    for cell, text in zip(t.rows[0].cells, header):
        cell.text = text
    for q, a in rows:
        cells = t.add_row().cells
        cells[0].text, cells[1].text = q, a


def write_pdf(path: str) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    pdf.set_auto_page_break(True, margin=20)

    def heading(text: str, size: int) -> None:
        pdf.set_font("Helvetica", "B", size)
        pdf.multi_cell(0, size * 0.6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)

    def para(text: str) -> None:
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)

    pdf.add_page()
    heading(TITLE.replace("—", "-").replace("’", "'"), 18)
    for h, paragraphs in PROSE:
        heading(h, 14)
        for p in paragraphs:
            para(p)
    pdf.add_page()  # the FAQ starts on page 2
    heading("Frequently asked questions", 14)
    for q, a in FAQ:
        heading(q, 12)
        para(a)
    heading("Troubleshooting", 14)
    for q, a in QA_LINES:
        para(f"Q: {q}")
        para(f"A: {a}")
    pdf.output(path)


def write_zh_docx(path: str) -> None:
    d = _docx_with_prose(ZH_TITLE, ZH_PROSE)
    d.add_heading("常见问题", 1)
    for q, a in ZH_QA:
        d.add_paragraph(f"问：{q}")
        d.add_paragraph(f"答：{a}")
    for q, a in ZH_HEADING_Q:
        d.add_heading(q, 2)
        d.add_paragraph(a)
    d.add_heading("以旧换新与配送", 1)
    _docx_table(d, ("问题", "答案"), ZH_TABLE)
    d.save(path)


def zh_html() -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{e(ZH_TITLE)}</title>"
             "<style>body{font-family:sans-serif}</style><script>var x = '问：不是问题';</script></head><body>",
             "<nav><a href='/'>首页</a></nav><main>", f"<h1>{e(ZH_TITLE)}</h1>"]
    for heading, paragraphs in ZH_PROSE:
        parts.append(f"<h2>{e(heading)}</h2>" + "".join(f"<p>{e(p)}</p>" for p in paragraphs))
    parts.append("<h2>常见问题</h2>")
    parts += [f"<p>问：{e(q)}<br>答：{e(a)}</p>" for q, a in ZH_QA]
    parts += [f"<h3>{e(q)}</h3><p>{e(a)}</p>" for q, a in ZH_HEADING_Q]
    parts.append("<h2>以旧换新与配送</h2><table><thead><tr><th>问题</th><th>答案</th></tr></thead><tbody>")
    parts += [f"<tr><td>{e(q)}</td><td>{e(a)}</td></tr>" for q, a in ZH_TABLE]
    parts.append("</tbody></table></main><footer>© Lumora</footer></body></html>")
    return "\n".join(parts)


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    write_docx(os.path.join(out, "handbook.docx"))
    write_pdf(os.path.join(out, "handbook.pdf"))
    write_zh_docx(os.path.join(out, "policy_zh.docx"))
    with open(os.path.join(out, "policy_zh.html"), "w", encoding="utf-8") as f:
        f.write(zh_html())
    with open(os.path.join(out, "faq_truth.json"), "w", encoding="utf-8") as f:
        json.dump(truth(), f, ensure_ascii=False, indent=1)
    print(f"wrote {out}: handbook.docx, handbook.pdf, policy_zh.docx, policy_zh.html, faq_truth.json")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
