"""The built-in schema the demo and the tests use: a trimmed copy of a standard Zoho org's modules, fields
and relations. A data table, apart from ``schema.py`` so the rules of a schema read without it."""

from __future__ import annotations

from syncengine.sandbox.schema import FieldSpec, FieldType, ModuleSpec, RelationSpec, Schema

__all__ = ["DEFAULT_SCHEMA", "default_schema"]


def _text(name: str, **kw: object) -> FieldSpec:
    return FieldSpec(api_name=name, type=FieldType.TEXT, **kw)  # type: ignore[arg-type]


def _f(name: str, type_: FieldType, **kw: object) -> FieldSpec:
    return FieldSpec(api_name=name, type=type_, **kw)  # type: ignore[arg-type]


_LEAD_SOURCES = (
    "Advertisement",
    "Cold Call",
    "Employee Referral",
    "External Referral",
    "Online Store",
    "Partner",
    "Public Relations",
    "Sales Email Alias",
    "Seminar Partner",
    "Internal Seminar",
    "Trade Show",
    "Web Download",
    "Web Research",
    "Chat",
)
_MEMBER_STATUS = (
    "Planning",
    "Active",
    "Invited",
    "Sent",
    "Received",
    "Opened",
    "Responded",
    "Bounced",
    "Opted Out",
    "Registered",
    "Attended",
    "Did Not Attend",
)
_STAGES = (
    "Qualification",
    "Needs Analysis",
    "Value Proposition",
    "Id. Decision Makers",
    "Perception Analysis",
    "Proposal/Price Quote",
    "Negotiation/Review",
    "Closed Won",
    "Closed Lost",
    "Closed Lost to Competition",
)
_LIST_PRICE = (_f("list_price", FieldType.CURRENCY),)


def default_schema() -> Schema:
    """The built-in schema the demo and the tests use (a trimmed copy of a standard Zoho org)."""
    leads = ModuleSpec(
        api_name="Leads",
        duplicate_check_fields=("Email",),
        fields=(
            _text("Last_Name", max_length=80, mandatory=True),
            _text("First_Name", max_length=40),
            _text("Company", max_length=200),
            _text("Designation", max_length=100),
            _f("Email", FieldType.EMAIL),
            _f("Phone", FieldType.PHONE),
            _f("Mobile", FieldType.PHONE),
            _f("Website", FieldType.WEBSITE),
            _f("Lead_Source", FieldType.PICKLIST, values=_LEAD_SOURCES),
            _f(
                "Lead_Status",
                FieldType.PICKLIST,
                values=(
                    "Attempted to Contact",
                    "Contact in Future",
                    "Contacted",
                    "Junk Lead",
                    "Lost Lead",
                    "Not Contacted",
                    "Pre-Qualified",
                    "Not Qualified",
                ),
            ),
            _text("Industry", max_length=120),
            _f("Annual_Revenue", FieldType.CURRENCY),
            _f("No_of_Employees", FieldType.INTEGER),
            _f("Email_Opt_Out", FieldType.BOOLEAN),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Lead_ID", external=True),
        ),
    )
    contacts = ModuleSpec(
        api_name="Contacts",
        duplicate_check_fields=("Email",),
        fields=(
            _text("Last_Name", max_length=80, mandatory=True),
            _text("First_Name", max_length=40),
            _f("Email", FieldType.EMAIL, unique=True),
            _f("Secondary_Email", FieldType.EMAIL),
            _f("Phone", FieldType.PHONE),
            _f("Mobile", FieldType.PHONE),
            _text("Title", max_length=100),
            _text("Department", max_length=100),
            _f("Date_of_Birth", FieldType.DATE),
            _f("Account_Name", FieldType.LOOKUP, lookup_module="Accounts"),
            _f("Lead_Source", FieldType.PICKLIST, values=_LEAD_SOURCES),
            _text("Mailing_Street", max_length=250),
            _text("Mailing_City", max_length=100),
            _text("Mailing_State", max_length=100),
            _text("Mailing_Zip", max_length=30),
            _text("Mailing_Country", max_length=100),
            _f("Email_Opt_Out", FieldType.BOOLEAN),
            _f("Last_Activity_Time", FieldType.DATETIME),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Contact_ID", external=True),
        ),
    )
    accounts = ModuleSpec(
        api_name="Accounts",
        duplicate_check_fields=("Account_Name",),
        fields=(
            _text("Account_Name", max_length=200, mandatory=True),
            _text("Account_Number", max_length=40),
            _f("Phone", FieldType.PHONE),
            _f("Website", FieldType.WEBSITE),
            _text("Industry", max_length=120),
            _f(
                "Account_Type",
                FieldType.PICKLIST,
                values=(
                    "Analyst",
                    "Competitor",
                    "Customer",
                    "Distributor",
                    "Integrator",
                    "Investor",
                    "Other",
                    "Partner",
                    "Press",
                    "Prospect",
                    "Reseller",
                    "Supplier",
                    "Vendor",
                ),
            ),
            _f("Annual_Revenue", FieldType.CURRENCY),
            _f("Employees", FieldType.INTEGER),
            _text("Billing_City", max_length=100),
            _text("Billing_Country", max_length=100),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Account_ID", external=True),
        ),
    )
    deals = ModuleSpec(
        api_name="Deals",
        duplicate_check_fields=("Deal_Name",),
        fields=(
            _text("Deal_Name", max_length=120, mandatory=True),
            _f("Amount", FieldType.CURRENCY),
            _f("Stage", FieldType.PICKLIST, values=_STAGES),
            _f("Pipeline", FieldType.PICKLIST, values=("Standard (Standard)",)),
            _f("Type", FieldType.PICKLIST, values=("Existing Business", "New Business")),
            _f("Closing_Date", FieldType.DATE),
            _f("Probability", FieldType.PERCENT),
            _f("Account_Name", FieldType.LOOKUP, lookup_module="Accounts"),
            _f("Contact_Name", FieldType.LOOKUP, lookup_module="Contacts"),
            _f("Lead_Source", FieldType.PICKLIST, values=_LEAD_SOURCES),
            _text("Next_Step", max_length=100),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Deal_ID", external=True),
        ),
    )
    products = ModuleSpec(
        api_name="Products",
        duplicate_check_fields=("Product_Name",),
        fields=(
            _text("Product_Name", max_length=200, mandatory=True),
            _text("Product_Code", max_length=40),
            _f("Unit_Price", FieldType.CURRENCY),
            _f("Qty_in_Stock", FieldType.DOUBLE),
            _f("Product_Active", FieldType.BOOLEAN),
            _f("Product_Category", FieldType.PICKLIST, values=("Hardware", "Software", "CRM Applications")),
            _text("Manufacturer", max_length=100),
            _f("Description", FieldType.TEXTAREA),
            _text("External_Product_ID", external=True),
        ),
    )
    campaigns = ModuleSpec(
        api_name="Campaigns",
        duplicate_check_fields=("Campaign_Name",),
        fields=(
            _text("Campaign_Name", max_length=200, mandatory=True),
            _f(
                "Type",
                FieldType.PICKLIST,
                values=(
                    "Advertisement",
                    "Banner Ads",
                    "Conference",
                    "Direct mail",
                    "Email",
                    "Partner",
                    "Public Relations",
                    "Referral Program",
                    "Telemarketing",
                    "Trade Show",
                    "Webinar",
                    "Others",
                ),
            ),
            _f("Status", FieldType.PICKLIST, values=("Planning", "Active", "Inactive", "Complete")),
            _f("Start_Date", FieldType.DATE),
            _f("End_Date", FieldType.DATE),
            _f("Expected_Revenue", FieldType.CURRENCY),
            _f("Budgeted_Cost", FieldType.CURRENCY),
            _f("Actual_Cost", FieldType.CURRENCY),
            _f("Description", FieldType.TEXTAREA),
        ),
    )
    price_books = ModuleSpec(
        api_name="Price_Books",
        duplicate_check_fields=("Price_Book_Name",),
        fields=(
            _text("Price_Book_Name", max_length=120, mandatory=True),
            _f("Active", FieldType.BOOLEAN),
            _f("Pricing_Model", FieldType.PICKLIST, values=("Flat", "Differential")),
            _f("Description", FieldType.TEXTAREA),
        ),
    )
    member_status = (_f("Member_Status", FieldType.PICKLIST, values=_MEMBER_STATUS),)
    relations = (
        # Contact_Role holds the id of a contact role, e.g. "111111000000026002" in the Zoho docs.
        RelationSpec(
            a_module="Contacts",
            a_list="Deals",
            b_module="Deals",
            b_list="Contacts",
            fields=(_f("Contact_Role", FieldType.LOOKUP),),
        ),
        RelationSpec(a_module="Campaigns", a_list="Leads", b_module="Leads", b_list="Campaigns", fields=member_status),
        RelationSpec(
            a_module="Campaigns",
            a_list="Contacts",
            b_module="Contacts",
            b_list="Campaigns",
            fields=member_status,
        ),
        RelationSpec(a_module="Products", a_list="Leads", b_module="Leads", b_list="Products", fields=_LIST_PRICE),
        RelationSpec(
            a_module="Products", a_list="Accounts", b_module="Accounts", b_list="Products", fields=_LIST_PRICE
        ),
        RelationSpec(
            a_module="Products", a_list="Contacts", b_module="Contacts", b_list="Products", fields=_LIST_PRICE
        ),
        RelationSpec(a_module="Products", a_list="Deals", b_module="Deals", b_list="Products", fields=_LIST_PRICE),
        RelationSpec(
            a_module="Products",
            a_list="Price_Books",
            b_module="Price_Books",
            b_list="Products",
            fields=_LIST_PRICE,
        ),
    )
    return Schema(modules=(leads, contacts, accounts, deals, products, campaigns, price_books), relations=relations)


DEFAULT_SCHEMA = default_schema()
