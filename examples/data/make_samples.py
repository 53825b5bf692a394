"""Writes the bundled sample datasets (deterministic). Run: python examples/data/make_samples.py

Each fact about a fictional organisation is asked in several phrasings with one fixed answer,
so a random split puts some phrasings in train and others in val/test: a model that learned
the fact answers the held-out phrasing; the base model cannot know it.
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

SUPPORT = [  # (answer, [question phrasings]) — Lumora Home, a fictional appliance maker
    ("The Lumora support hotline is 400-820-1177.", ["What is the Lumora support hotline number?", "How do I call Lumora support?", "Which phone number reaches Lumora customer service?", "I need Lumora's helpline number.", "What number should I dial for help with my Lumora appliance?", "Can you give me the Lumora support phone number?"]),
    ("Lumora support is open from 8:00 to 21:00, Monday to Saturday.", ["When is Lumora support open?", "What are Lumora's customer service hours?", "Is Lumora support available on Saturday, and when?", "At what times can I reach Lumora support?", "What hours does the Lumora help desk work?", "When can I contact Lumora customer service?"]),
    ("You can return a Lumora product within 45 days of delivery.", ["How long do I have to return a Lumora product?", "What is Lumora's return window?", "Can I still return my Lumora purchase after a month?", "How many days does Lumora allow for returns?", "What is the return period for Lumora items?", "Until when can I send back a Lumora appliance?"]),
    ("The AquaPure 3 water filter has a 30-month warranty.", ["How long is the warranty on the AquaPure 3?", "What warranty does the AquaPure 3 water filter have?", "Is my AquaPure 3 still under warranty after two years?", "How many months of warranty come with the AquaPure 3?", "What is the AquaPure 3 warranty period?", "Tell me the warranty length for the AquaPure 3 filter."]),
    ("Replace the AquaPure 3 filter cartridge every 4 months.", ["How often should I change the AquaPure 3 cartridge?", "When do I replace the AquaPure 3 filter?", "What is the cartridge replacement interval for the AquaPure 3?", "How many months does an AquaPure 3 cartridge last?", "How frequently does the AquaPure 3 filter need a new cartridge?", "When is the AquaPure 3 cartridge due for replacement?"]),
    ("The AquaPure 3 cartridge costs 189 yuan.", ["How much is an AquaPure 3 cartridge?", "What is the price of a replacement AquaPure 3 cartridge?", "What does a new AquaPure 3 filter cartridge cost?", "How much do I pay for an AquaPure 3 cartridge?", "What's the AquaPure 3 cartridge price?", "Price of the AquaPure 3 replacement cartridge?"]),
    ("Error E4 on the BreezeMax air purifier means the filter door is open.", ["What does error E4 mean on the BreezeMax?", "My BreezeMax air purifier shows E4. What is wrong?", "BreezeMax displays E4, what does it mean?", "What is the E4 code on a BreezeMax purifier?", "Why is my BreezeMax showing error E4?", "Explain the BreezeMax E4 error."]),
    ("Error E7 on the BreezeMax means the fan motor is blocked.", ["What does error E7 mean on the BreezeMax?", "My BreezeMax shows E7. What is wrong?", "BreezeMax displays E7, what does it mean?", "What is the E7 code on a BreezeMax purifier?", "Why is my BreezeMax showing error E7?", "Explain the BreezeMax E7 error."]),
    ("To reset the BreezeMax, hold the power and timer buttons together for 5 seconds.", ["How do I reset my BreezeMax?", "What is the reset procedure for the BreezeMax air purifier?", "How can I factory reset a BreezeMax?", "Which buttons reset the BreezeMax?", "How do you restart the BreezeMax to factory settings?", "Steps to reset the BreezeMax purifier?"]),
    ("Lumora ships free on orders over 299 yuan.", ["When is shipping free at Lumora?", "What is the minimum order for free shipping at Lumora?", "Does Lumora offer free delivery?", "How much must I spend for free Lumora shipping?", "Is shipping free on Lumora orders, and from what amount?", "What's Lumora's free shipping threshold?"]),
    ("Standard Lumora delivery takes 3 to 5 working days.", ["How long does Lumora delivery take?", "When will my Lumora order arrive?", "What is the standard delivery time at Lumora?", "How many days does Lumora shipping take?", "How fast does Lumora deliver?", "What delivery time should I expect from Lumora?"]),
    ("The Lumora service centre is at 88 Qingshan Road, Hangzhou.", ["Where is the Lumora service centre?", "What is the address of Lumora's repair centre?", "Where can I bring my Lumora appliance for repair?", "Which street is the Lumora service centre on?", "Give me the address of the Lumora service centre.", "Where is Lumora's repair shop located?"]),
    ("The ChefMate K2 kettle holds 1.7 litres.", ["What is the capacity of the ChefMate K2 kettle?", "How much water does the ChefMate K2 hold?", "How many litres is the ChefMate K2?", "What volume does the ChefMate K2 kettle have?", "How big is the ChefMate K2 kettle?", "ChefMate K2 capacity?"]),
    ("The ChefMate K2 boils one litre in about 3 minutes.", ["How fast does the ChefMate K2 boil water?", "How long does the ChefMate K2 take to boil a litre?", "What is the boiling time of the ChefMate K2?", "How quick is the ChefMate K2 kettle?", "How many minutes for the ChefMate K2 to boil one litre?", "ChefMate K2 boiling speed?"]),
    ("Lumora Plus members get a 10% discount and a free yearly check-up.", ["What do Lumora Plus members get?", "What are the benefits of Lumora Plus?", "Why should I join Lumora Plus?", "What does a Lumora Plus membership include?", "Which perks come with Lumora Plus?", "Tell me about Lumora Plus benefits."]),
    ("Lumora Plus costs 99 yuan per year.", ["How much does Lumora Plus cost?", "What is the price of a Lumora Plus membership?", "What is the yearly fee for Lumora Plus?", "How much do I pay for Lumora Plus?", "Lumora Plus membership price?", "What does Lumora Plus cost per year?"]),
    ("The Lumora app is called Lumora Link.", ["What is the name of the Lumora app?", "Which app controls Lumora appliances?", "What app do I download for my Lumora devices?", "What is Lumora's mobile app called?", "Which phone app works with Lumora products?", "Name of the Lumora smartphone app?"]),
    ("Lumora Link pairs with devices over Bluetooth using the code 2468.", ["What is the pairing code for Lumora Link?", "How do I pair a device with Lumora Link?", "Which code pairs my appliance with the Lumora app?", "What code does Lumora Link ask for when pairing?", "How does Lumora Link connect to devices?", "What is the Lumora Link Bluetooth code?"]),
    ("The SnowCube mini fridge uses 0.4 kWh per day.", ["How much power does the SnowCube mini fridge use?", "What is the daily energy use of the SnowCube?", "How many kWh does the SnowCube use per day?", "Is the SnowCube mini fridge energy efficient, how much does it use?", "SnowCube power consumption?", "What is the SnowCube fridge's energy consumption?"]),
    ("Lumora's chief executive is Mira Castell.", ["Who is the CEO of Lumora?", "Who runs Lumora?", "What is the name of Lumora's chief executive?", "Who leads Lumora Home?", "Who is in charge of Lumora as CEO?", "Name Lumora's chief executive officer."]),
    ("Lumora was founded in 2011 in Hangzhou.", ["When was Lumora founded?", "Where and when did Lumora start?", "In which year was Lumora Home founded?", "How old is Lumora as a company?", "What city was Lumora founded in, and when?", "Lumora founding year?"]),
    ("Lumora's support email is care@lumora-home.example.", ["What is Lumora's support email?", "How can I email Lumora customer service?", "Which email address reaches Lumora support?", "Where do I send an email to Lumora support?", "Lumora support email address?", "Can I contact Lumora by email, at which address?"]),
    ("Spare parts for discontinued Lumora models are kept for 7 years.", ["How long does Lumora keep spare parts?", "Can I still get parts for an old Lumora model?", "For how many years are Lumora spare parts available?", "Does Lumora stock parts for discontinued products?", "How long are spare parts supplied for Lumora appliances?", "Lumora spare parts availability period?"]),
    ("A home repair visit from Lumora costs 60 yuan outside the warranty.", ["How much does a Lumora home repair visit cost?", "What is the fee for a Lumora technician visit?", "Do I pay for a Lumora repair visit after warranty?", "What does Lumora charge for a home call?", "Lumora out-of-warranty visit fee?", "How much is a Lumora technician call-out?"]),
    ("The BreezeMax covers rooms up to 45 square metres.", ["How large a room can the BreezeMax clean?", "What room size is the BreezeMax for?", "What is the BreezeMax coverage area?", "Up to how many square metres does the BreezeMax work?", "Is the BreezeMax enough for a 40 square metre room?", "BreezeMax maximum room size?"]),
    ("The BreezeMax HEPA filter should be replaced every 6 months.", ["How often do I change the BreezeMax filter?", "When should the BreezeMax HEPA filter be replaced?", "What is the BreezeMax filter replacement interval?", "How long does a BreezeMax HEPA filter last?", "How many months between BreezeMax filter changes?", "When is the BreezeMax filter due?"]),
    ("Lumora gift cards never expire.", ["Do Lumora gift cards expire?", "How long is a Lumora gift card valid?", "Is there an expiry date on Lumora gift cards?", "When does my Lumora gift card run out?", "Lumora gift card validity?", "Can a Lumora gift card expire?"]),
    ("Lumora accepts Alipay, WeChat Pay and UnionPay cards.", ["Which payment methods does Lumora accept?", "Can I pay Lumora with WeChat Pay?", "How can I pay for a Lumora order?", "What payment options does Lumora have?", "Does Lumora take Alipay?", "Lumora accepted payment methods?"]),
    ("Lumora's order tracking page is track.lumora-home.example.", ["Where can I track my Lumora order?", "How do I follow my Lumora delivery?", "What is the Lumora order tracking website?", "Which site shows the status of my Lumora order?", "Lumora tracking page?", "How can I check where my Lumora parcel is?"]),
    ("The ChefMate K2 turns off automatically 30 seconds after boiling.", ["Does the ChefMate K2 switch off by itself?", "When does the ChefMate K2 turn off?", "Has the ChefMate K2 got an auto shut-off?", "How does the ChefMate K2 auto-off work?", "ChefMate K2 automatic shutoff timing?", "Will the ChefMate K2 stay on after boiling?"]),
]

CLINIC = [  # (answer, [question phrasings]) — 青禾社区诊所, a fictional clinic
    ("青禾社区诊所的门诊时间是周一至周六 8:00–17:30。", ["青禾社区诊所几点开门？", "青禾诊所的门诊时间是什么？", "请问青禾社区诊所周六看病吗？什么时间？", "青禾诊所什么时候可以看门诊？", "青禾社区诊所的营业时间？", "我想去青禾诊所看病，几点到几点？"]),
    ("青禾社区诊所的预约电话是 0571-8866-2020。", ["青禾社区诊所的预约电话是多少？", "怎么打电话预约青禾诊所？", "青禾诊所挂号电话？", "请给我青禾社区诊所的电话号码。", "预约青禾诊所拨什么号码？", "青禾诊所的联系电话是多少？"]),
    ("青禾社区诊所位于杭州市青禾路 36 号。", ["青禾社区诊所在哪里？", "青禾诊所的地址是什么？", "怎么找到青禾社区诊所？在哪条路？", "青禾诊所位于什么地方？", "请告诉我青禾社区诊所的地址。", "青禾诊所具体在哪？"]),
    ("青禾社区诊所的院长是林微医生。", ["青禾社区诊所的院长是谁？", "谁负责管理青禾诊所？", "青禾诊所的院长叫什么名字？", "青禾社区诊所由哪位医生担任院长？", "青禾诊所的负责人是谁？", "请问青禾诊所院长是哪位？"]),
    ("儿科由周安医生坐诊，时间是每周二和周四上午。", ["青禾诊所的儿科什么时候有医生？", "青禾诊所儿科是哪位医生？", "带孩子去青禾诊所看儿科选哪天？", "青禾社区诊所儿科坐诊时间？", "青禾诊所的儿科医生是谁，什么时候在？", "青禾诊所哪天有儿科门诊？"]),
    ("青禾诊所的基础体检套餐价格是 398 元。", ["青禾诊所基础体检多少钱？", "青禾社区诊所体检套餐价格？", "在青禾诊所做基础体检要花多少钱？", "青禾诊所的体检费用是多少？", "青禾诊所基础体检套餐收费多少？", "请问青禾诊所体检价格？"]),
    ("体检前需要空腹 8 小时。", ["青禾诊所体检前要空腹多久？", "做体检前需要禁食多长时间？", "青禾诊所体检要求空腹几个小时？", "体检当天需要空腹吗？多久？", "在青禾诊所抽血体检前要饿多久？", "体检前空腹时间是多少？"]),
    ("流感疫苗每年 10 月至次年 1 月在青禾诊所接种，费用 128 元。", ["青禾诊所什么时候打流感疫苗？", "在青禾诊所接种流感疫苗多少钱？", "青禾社区诊所的流感疫苗接种时间和价格？", "青禾诊所流感疫苗几月份可以打？", "青禾诊所流感疫苗费用？", "我想在青禾诊所打流感疫苗，什么时候、多少钱？"]),
    ("青禾诊所接受杭州市医保卡，门诊报销比例为 60%。", ["青禾诊所可以用医保卡吗？", "青禾诊所医保报销多少？", "青禾社区诊所支持医保吗？报销比例是多少？", "在青禾诊所看病能走医保吗？", "青禾诊所门诊医保报销比例？", "青禾诊所收不收医保卡？"]),
    ("青禾诊所的中医科由陈松医生负责，周三和周五全天坐诊。", ["青禾诊所有中医吗？", "青禾诊所中医科是哪位医生？", "青禾社区诊所中医什么时候坐诊？", "青禾诊所的中医科医生和时间？", "想在青禾诊所看中医，哪天去？", "青禾诊所中医门诊时间？"]),
    ("青禾诊所的检验报告一般在 2 个工作日内出具，可在青禾健康小程序查看。", ["青禾诊所的化验结果多久出来？", "在哪里查看青禾诊所的检验报告？", "青禾诊所抽血报告几天能拿？", "青禾社区诊所检验报告怎么查？", "青禾诊所化验单多久出结果？", "青禾诊所的报告在哪看，要等几天？"]),
    ("青禾诊所为 65 岁以上老人提供每年一次免费体检。", ["青禾诊所对老人有免费体检吗？", "65 岁以上在青禾诊所体检要钱吗？", "青禾社区诊所的老年人体检政策？", "我父亲 70 岁，可以在青禾诊所免费体检吗？", "青禾诊所老人免费体检几次？", "青禾诊所给老年人什么体检福利？"]),
    ("青禾诊所的停车场在诊所后门，前 2 小时免费。", ["青禾诊所可以停车吗？", "去青禾诊所停车收费吗？", "青禾社区诊所的停车场在哪？", "青禾诊所停车免费多久？", "开车去青禾诊所停哪里？", "青禾诊所停车怎么收费？"]),
    ("青禾诊所的口腔科洗牙费用是 150 元。", ["青禾诊所洗牙多少钱？", "在青禾诊所洗牙的价格？", "青禾社区诊所口腔科洗牙收费？", "青禾诊所洗一次牙要多少钱？", "青禾诊所洁牙费用？", "请问青禾诊所洗牙价格是多少？"]),
    ("青禾诊所的夜间急诊电话是 0571-8866-1200。", ["青禾诊所晚上有急诊吗？电话多少？", "青禾诊所夜间急诊电话？", "半夜不舒服可以打青禾诊所哪个电话？", "青禾社区诊所急诊联系电话？", "青禾诊所夜里急诊打什么号码？", "青禾诊所的急诊号码是多少？"]),
    ("青禾诊所每周三下午开设糖尿病健康讲座，免费参加。", ["青禾诊所有健康讲座吗？", "青禾诊所的糖尿病讲座什么时候？", "青禾社区诊所糖尿病讲座收费吗？", "青禾诊所哪天有糖尿病健康课？", "我想参加青禾诊所的糖尿病讲座，什么时间？", "青禾诊所健康讲座时间和费用？"]),
    ("青禾诊所的康复科提供针灸和推拿，每次 80 元。", ["青禾诊所可以针灸吗？多少钱？", "青禾诊所推拿价格？", "青禾社区诊所康复科有什么项目？", "青禾诊所针灸一次多少钱？", "青禾诊所有没有推拿服务？", "青禾诊所康复科收费？"]),
    ("在青禾诊所预约后请提前 15 分钟到达签到。", ["在青禾诊所预约后要提前多久到？", "青禾诊所预约了需要提前到吗？", "青禾社区诊所签到要提前几分钟？", "去青禾诊所看预约门诊应该几点到？", "青禾诊所预约就诊提前多久签到？", "青禾诊所预约的病人要早到多久？"]),
    ("青禾诊所的疫苗接种需要携带身份证和接种本。", ["在青禾诊所打疫苗要带什么？", "青禾诊所接种疫苗需要哪些证件？", "青禾社区诊所打疫苗带什么材料？", "去青禾诊所接种要带接种本吗？", "青禾诊所疫苗接种所需证件？", "青禾诊所打疫苗需要身份证吗？"]),
    ("青禾诊所的药房营业到晚上 20:00。", ["青禾诊所药房几点关门？", "青禾诊所药房营业时间？", "晚上七点还能去青禾诊所拿药吗？", "青禾社区诊所的药房开到几点？", "青禾诊所药房晚上开到什么时候？", "青禾诊所什么时候可以取药？"]),
]

CLAUSE_TYPES = {
    "保密条款": "{a}与{b}应对在{ctx}履行过程中知悉的对方商业秘密和技术信息严格保密，未经对方书面同意不得向任何第三方披露。保密义务自本协议签订之日起生效，在本协议终止后{n}年内继续有效。",
    "违约责任条款": "任何一方违反本{ctx}约定的，应向守约方支付相当于合同总金额{p}%的违约金；违约金不足以弥补守约方损失的，违约方还应赔偿差额部分。",
    "争议解决条款": "因本{ctx}引起的或与本{ctx}有关的任何争议，双方应首先友好协商解决；协商不成的，任何一方均可向{court}提起诉讼。",
    "知识产权条款": "在本{ctx}履行过程中产生的全部知识产权归{a}所有。{b}不得以任何形式复制、修改、出租或转让相关成果，但本{ctx}另有约定的除外。",
    "付款条款": "{b}应在本{ctx}签订之日起{d}日内向{a}支付首期款项，即合同总金额的{p}%；余款在交付并验收合格后{d}日内付清。",
    "终止条款": "任何一方严重违反本{ctx}且在收到书面通知后{d}日内未予纠正的，对方有权书面通知解除本{ctx}，解除通知自送达之日起生效。",
}
CONTEXTS = [("软件许可协议", "许可方", "被许可方"), ("劳动合同", "用人单位", "劳动者"),
            ("房屋租赁合同", "出租方", "承租方"), ("设备采购合同", "卖方", "买方")]
PROMPTS = ["生成一份{ctx}的{t}", "请起草{ctx}中的{t}", "帮我写{ctx}里的{t}"]


def support_rows():
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for a, qs in SUPPORT for q in qs]


def clinic_rows():
    return [{"问题": q, "答案": a} for a, qs in CLINIC for q in qs]


def legal_rows():
    rng = random.Random(7)
    rows = []
    for ctx, a, b in CONTEXTS:
        for t, body in CLAUSE_TYPES.items():
            for p in rng.sample(PROMPTS, 2):
                text = body.format(a=a, b=b, ctx=ctx, n=rng.choice([2, 3, 5]), p=rng.choice([10, 20, 30]),
                                   d=rng.choice([7, 15, 30]), court=rng.choice(["合同签订地人民法院", "被告住所地人民法院"]))
                rows.append({"instruction": p.format(ctx=ctx, t=t), "input": "", "output": text})
    return rows


def write(name, rows):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    write("support_en.jsonl", support_rows())
    write("clinic_zh.jsonl", clinic_rows())
    write("legal_zh.jsonl", legal_rows())
